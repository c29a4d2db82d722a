"""Batched, device-agnostic input preparation and augmentation (no torchvision)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Preprocess",
    "as_float",
    "cifar10_input",
    "random_crop_flip",
    "token_ids",
    "trim_padding",
]

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


def random_crop_flip(
    x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad by ``pad``, take a random ``H x W`` crop and randomly flip each sample horizontally.

    ``x`` is ``[B, C, H, W]``. One gather over the whole batch, no per-sample loop. Random draws
    (in this order: row offsets, column offsets, flips) come from ``generator`` on its own device
    (CPU when none is given) and are moved to ``x.device``, so a seeded CPU generator gives the
    same augmentation for CPU and GPU batches.
    """
    if x.dim() != 4:
        raise ValueError(f"expected x of shape [B, C, H, W], got {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    b, _, h, w = x.shape
    rng_device = generator.device if generator is not None else torch.device("cpu")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=rng_device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=rng_device)
    flip = torch.randint(0, 2, (b,), generator=generator, device=rng_device).bool()
    oy, ox, flip = oy.to(x.device), ox.to(x.device), flip.to(x.device)

    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = oy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = torch.arange(w, device=x.device).expand(b, w)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices around the channel slice put their broadcast dims first: [B, H, W, C].
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


# A preprocess callable turns a stored batch into model input: (x, train, generator) -> input. It is
# the data's (a DatasetSpec names it), not the training loop's: TrainConfig, evaluate and
# calibrate_batchnorm take one.
Preprocess = Callable[[torch.Tensor, bool, "torch.Generator | None"], torch.Tensor]


def as_float(x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Tensors as they are, in float32 (digits, whose 8x8 images are too small for crops; a user's own data)."""
    return x.to(torch.float32)


def token_ids(x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Language-model token ids [B, T], unchanged."""
    return x


def trim_padding(x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sentence token ids [B, L] padded with 0: drop the columns that are padding in every row."""
    length = int((x != 0).sum(1).max()) if x.numel() else 0
    return x[:, : max(length, 1)]


def cifar10_input(x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 scaled to [0, 1] (floating input is taken as already scaled), random crop + flip when
    ``train``, then per-channel normalisation with the CIFAR-10 mean/std."""
    xf = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
    if train:
        xf = random_crop_flip(xf, pad=4, generator=generator)
    mean = torch.tensor(CIFAR10_MEAN, dtype=xf.dtype, device=xf.device).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=xf.dtype, device=xf.device).view(1, -1, 1, 1)
    return (xf - mean) / std
