"""Local training of a sub-model (SPEC §4), static-BN calibration and evaluation.

Loss = cross-entropy + μ·L_con. L_con is MOON's model-contrastive term; it needs frozen forward
passes, so it runs on only a ``regularised_fraction`` of the batches, spread evenly. The representation z is the input of the family's
``representation_layer`` (the classifier or LM head), captured with a forward hook, so a model
needs no special forward method; a per-token input [B, T, H] is averaged over T. Language models
(logits [B, T, V], targets [B, T]) use the per-token cross-entropy. BatchNorm follows HeteroFL's
static policy: training always normalises with batch statistics; running statistics are
recomputed for the model being evaluated by a calibration pass over a few batches of the
evaluating party's training data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from msfusion_core.local.augment import Preprocess, as_float
from msfusion_core.method.contrastive import CONTRASTIVE_MU, check_mu, contrastive_loss
from msfusion_core.data.tensors import TensorData
from msfusion_core.local.measure import shape_signature


@dataclass(frozen=True)
class TrainConfig:
    preprocess: Preprocess = as_float  # stored batch -> model input (msfusion_core.local.augment)
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    mu: float = CONTRASTIVE_MU  # contrastive weight; 0 turns the contrastive term off
    tau: float = 0.5
    regularised_fraction: float = 0.25  # share of batches that carry the contrastive term (C1: a quarter cost 1.17x small's FLOPs and measured no worse than every batch at 1.73x)
    optimizer: str = "sgd"  # sgd (with momentum) | adamw; fresh every round (no optimizer state is sent)
    device: str = "cpu"  # where local training runs ("cuda", "cuda:1", ...); the reply comes back on the CPU

    def __post_init__(self) -> None:
        check_mu(self.mu, "TrainConfig.mu")


OPTIMIZERS = ("sgd", "adamw")


def step_decay(run_round: int, num_rounds: int, milestones: Sequence[float], factor: float) -> float:
    """The learning-rate multiplier of round ``run_round`` (1-based) under a step schedule: × ``factor``
    after each milestone, a fraction of ``num_rounds`` (milestone 0.5 of 300 rounds: rounds 151 on)."""
    return factor ** sum(run_round > m * num_rounds for m in milestones)


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
    flops: int  # measured FLOPs of all local steps (forward + backward + frozen forwards)


def regularised_batches(fraction: float, num_batches: int, first: int = 0) -> torch.Tensor:
    """Which of ``num_batches`` batches, numbered from ``first`` in the participant's whole run,
    carry the frozen-model terms: batch b iff ⌊(b+1)·f⌋ > ⌊b·f⌋, so f = 1 is every batch and f = 1/4
    every fourth. Counting across rounds keeps the share f when a round has fewer than 1/f batches
    (2 batches a round at f = 1/4: one batch every second round, not none)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"regularised fraction must be in (0, 1], got {fraction}")
    b = torch.arange(first, first + num_batches, dtype=torch.float64)
    return torch.floor((b + 1) * fraction) > torch.floor(b * fraction)


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


def _contrastive_step(model: nn.Module, frozen: list[nn.Module], opt: torch.optim.Optimizer, cfg: TrainConfig, zbox: dict, boxes: list[dict]):
    """One optimiser step; returns the (total, ce, contrastive) losses, detached. ``zbox`` and
    ``boxes`` capture the representation z of ``model`` and of the frozen models."""

    def step(x: torch.Tensor, y: torch.Tensor, regularise: bool) -> torch.Tensor:
        logits = logits_of(model(x))
        ce = token_loss(logits, y)
        con = torch.zeros((), device=ce.device)
        if regularise:
            with torch.no_grad():
                for m in frozen:
                    m(x)
            z_prev = boxes[1]["z"] if len(boxes) > 1 else None
            con = contrastive_loss(zbox["z"], boxes[0]["z"], z_prev, cfg.tau)
        total = ce + cfg.mu * con
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return torch.stack([total, ce, con]).detach()

    return step


def _counted(step, key: tuple, x: torch.Tensor, y: torch.Tensor, regularise: bool) -> tuple[torch.Tensor, float]:
    """``step``'s losses and its FLOPs, measured on the first step of each shape, once per process."""
    if key not in _FLOPS_PER_EXAMPLE:
        with FlopCounterMode(display=False) as counter:
            losses = step(x, y, regularise)
        _FLOPS_PER_EXAMPLE[key] = counter.get_total_flops() / x.shape[0]
    else:
        losses = step(x, y, regularise)
    return losses, _FLOPS_PER_EXAMPLE[key] * x.shape[0]


def train_submodel(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    *,
    representation_layer: str,
    global_model: nn.Module | None = None,
    prev_model: nn.Module | None = None,
    seed: int = 0,
    round_index: int = 0,
) -> TrainResult:
    """Train ``model`` in place. ``round_index``: the rounds before this one (server round − 1),
    which numbers the batches for ``regularised_batches``. ``global_model`` (the sub-model as
    received) gives the contrastive positive, ``prev_model`` (the previous local sub-model mapped
    onto this round's units) the negative; both are frozen. Without ``global_model``, or with
    μ = 0, only cross-entropy is used."""
    n = int(data.y.shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty partition")
    use_con = cfg.mu > 0 and global_model is not None
    frozen = [m for m in (global_model, prev_model) if m is not None] if use_con else []  # frozen[0]: the received model
    device = torch.device(cfg.device)
    for m in [model, *frozen]:
        m.to(device).train()  # static BN: batch statistics, as in training
    for m in frozen:
        m.requires_grad_(False)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    start, flops = time.perf_counter(), 0.0
    # total, ce: summed over batches; contrastive: over regularised batches. Kept on the training
    # device, so a batch adds no host sync.
    totals = torch.zeros(3, device=device)
    signature = shape_signature(model)  # the FLOP cache key's model part, fixed during training
    batches = regularised = 0
    with ExitStack() as stack:
        zbox = stack.enter_context(capture_input(model, representation_layer))
        boxes = [stack.enter_context(capture_input(m, representation_layer)) for m in frozen]
        step = _contrastive_step(model, frozen, opt, cfg, zbox, boxes)
        per_epoch = -(-n // cfg.batch_size)
        for epoch in range(cfg.epochs):
            carries = regularised_batches(cfg.regularised_fraction, per_epoch, (round_index * cfg.epochs + epoch) * per_epoch).tolist()
            totals.zero_()
            batches = regularised = 0
            perm = torch.randperm(n, generator=gen)
            for b, i in enumerate(range(0, n, cfg.batch_size)):
                idx = perm[i : i + cfg.batch_size]
                if idx.numel() < 2 and n >= 2:
                    continue  # a batch of one breaks batch-statistics BatchNorm
                # The generator stays on the CPU: the same seed draws the same batches and crops on any device.
                x = cfg.preprocess(data.x[idx].to(device), True, gen)
                y = data.y[idx].to(device)
                regularise = bool(frozen) and carries[b]
                losses, step_flops = _counted(step, (signature, tuple(x.shape), len(frozen) if regularise else None), x, y, regularise)
                flops += step_flops
                totals += losses
                batches += 1
                regularised += regularise
    mean = (totals.cpu() / torch.tensor([max(batches, 1)] * 2 + [max(regularised, 1)])).tolist()
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
