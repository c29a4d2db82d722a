"""Local training of a sub-model (SPEC §4), static-BN calibration and evaluation.

Loss = cross-entropy + μ·L_con. The representation z is the input of the family's
``representation_layer`` (the classifier or LM head), captured with a forward hook, so a model
needs no special forward method; a per-token input [B, T, H] is averaged over T. Language models
(logits [B, T, V], targets [B, T]) use the per-token cross-entropy. BatchNorm follows HeteroFL's
static policy: training always normalises with batch statistics; running statistics are
recomputed for the model being evaluated by a calibration pass over a few batches of the
evaluating party's training data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from msfusion_core.local.augment import Preprocess, as_float
from msfusion_core.method.contrastive import contrastive_loss
from msfusion_core.data import TensorData
from msfusion_core.local.measure import shape_signature


@dataclass(frozen=True)
class TrainConfig:
    preprocess: Preprocess = as_float  # stored batch -> model input (msfusion_core.local.augment)
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    mu: float = 1.0  # contrastive weight; 0 turns the contrastive term off
    tau: float = 0.5
    optimizer: str = "sgd"  # sgd (with momentum) | adamw; fresh every round (no optimizer state is sent)
    device: str = "cpu"  # where local training runs ("cuda", "cuda:1", ...); the reply comes back on the CPU


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


def logits_of(output: object) -> torch.Tensor:
    """A plain tensor, or a `transformers` output's ``.logits``."""
    return output if isinstance(output, torch.Tensor) else output.logits


def token_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for class logits [B, C] / targets [B] and token logits [B, T, V] / targets [B, T]."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction=reduction)


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean total loss over the last epoch
    ce_loss: float
    contrastive_loss: float
    num_examples: int  # distinct local examples (the aggregation weight)
    seconds: float
    flops: int  # measured FLOPs of all local steps (forward + backward + contrastive forwards)


@contextmanager
def capture_input(model: nn.Module, layer: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record the input of ``model.<layer>`` on every forward: the representation z."""
    box: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, inputs: tuple, _output: object) -> None:
        z = inputs[0]
        box["z"] = z.mean(dim=1) if z.ndim == 3 else z  # [B, T, H] → [B, H]: mean over positions

    handle = model.get_submodule(layer).register_forward_hook(keep)
    try:
        yield box
    finally:
        handle.remove()


_FLOPS_PER_EXAMPLE: dict[tuple, float] = {}


def train_submodel(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    *,
    representation_layer: str,
    global_model: nn.Module | None = None,
    prev_model: nn.Module | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train ``model`` in place. ``global_model`` (the sub-model as received) gives the contrastive
    positive, ``prev_model`` (the previous local sub-model mapped onto this round's units) the
    negative; both are frozen. Without ``global_model`` or with μ = 0 only cross-entropy is used."""
    n = int(data.y.shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty partition")
    use_con = cfg.mu > 0 and global_model is not None
    frozen = [m for m in (global_model, prev_model) if m is not None and use_con]
    device = torch.device(cfg.device)
    model.to(device)
    for m in frozen:
        m.to(device)
        m.train()  # static BN: batch statistics, as in training
        m.requires_grad_(False)
    model.train()
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    flops = 0.0
    totals = torch.zeros(3)
    batches = 0
    signature = shape_signature(model)  # the FLOP cache key's model part, fixed during training

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ce = token_loss(logits_of(model(x)), y)
        con = torch.zeros(())
        if use_con:
            with torch.no_grad():
                for m in frozen:
                    m(x)
            z_prev = boxes[1]["z"] if len(boxes) > 1 else None
            con = contrastive_loss(zbox["z"], boxes[0]["z"], z_prev, cfg.tau)
        opt.zero_grad(set_to_none=True)
        (ce + cfg.mu * con).backward()
        opt.step()
        return ce.detach(), con.detach()

    with ExitStack() as stack:
        zbox = stack.enter_context(capture_input(model, representation_layer))
        boxes = [stack.enter_context(capture_input(m, representation_layer)) for m in frozen]
        for _epoch in range(cfg.epochs):
            totals.zero_()
            batches = 0
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                if idx.numel() < 2 and n >= 2:
                    continue  # a batch of one breaks batch-statistics BatchNorm
                # The generator stays on the CPU: the same seed draws the same batches and crops on any device.
                x = cfg.preprocess(data.x[idx].to(device), True, gen)
                y = data.y[idx].to(device)
                key = (signature, tuple(x.shape), len(frozen))
                if key not in _FLOPS_PER_EXAMPLE:  # measure the first step of each shape, once
                    with FlopCounterMode(display=False) as counter:
                        ce, con = step(x, y)
                    _FLOPS_PER_EXAMPLE[key] = counter.get_total_flops() / x.shape[0]
                else:
                    ce, con = step(x, y)
                flops += _FLOPS_PER_EXAMPLE[key] * x.shape[0]
                totals += torch.stack([ce + cfg.mu * con, ce, con])
                batches += 1
    mean = (totals / max(batches, 1)).tolist()
    return TrainResult(mean[0], mean[1], mean[2], n, time.perf_counter() - start, int(flops))


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module, data: TensorData, preprocess: Preprocess = as_float, batch_size: int = 128, num_batches: int = 8
) -> None:
    """Recompute BatchNorm running statistics as the exact average over ``num_batches`` batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    device = _device_of(model)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(int(data.y.shape[0]), generator=gen)
    for b in range(num_batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        if idx.numel() < 2:
            break
        model(preprocess(data.x[idx].to(device), False, None))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, preprocess: Preprocess = as_float, batch_size: int | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode, per token for language models
    (so exp(loss) is the perplexity)."""
    model.eval()
    # Sequences of a language model carry [T, V] logits each: keep a batch's logits to ~100 MB.
    batch_size = batch_size or (16 if data.y.ndim == 2 else 256)
    loss = correct = 0.0
    n = int(data.y.shape[0])
    device = _device_of(model)
    for i in range(0, n, batch_size):
        logits = logits_of(model(preprocess(data.x[i : i + batch_size].to(device), False, None)))
        y = data.y[i : i + batch_size].to(device)
        loss += float(token_loss(logits, y, reduction="sum"))
        correct += float((logits.argmax(-1) == y).sum())
    count = max(int(data.y.numel()), 1)
    return loss / count, correct / count


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters are (evaluation and calibration run there)."""
    return next(model.parameters()).device
