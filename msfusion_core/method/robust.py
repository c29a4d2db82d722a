"""Robust aggregation options against a few bad or malicious participants.

- ``clip_updates``: scale every participant's update Δ_n down to at most ``factor`` × the round's
  median update size (size measured as RMS over the participant's own coordinates, so sub-models
  of different capacity compare fairly).
- ``robust_average``: per coordinate, over the participants that covered it, a coordinate-wise
  trimmed mean (drop ⌊β·k⌋ values at each end of the k values) or median, instead of the weighted
  mean. Robust statistics are unweighted; coordinates covered by few participants get little
  protection (a trimmed mean over k < 1/β values is the plain mean).

Both are vectorised per tensor: the participants' values are laid out in a [P, *shape] tensor
with NaN where a participant did not train a coordinate, and reduced along the first axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from msfusion_core.method.aggregate import AggregateResult, Contribution, scatter_average
from msfusion_core.method.slicing import Slicer, take

ROBUST_MODES = ("none", "trimmed-mean", "median")


def clip_updates(
    global_state: Mapping[str, torch.Tensor], contributions: Sequence[Contribution], slicer: Slicer, keys: Sequence[str], factor: float
) -> list[Contribution]:
    if factor <= 0:
        raise ValueError(f"clip factor must be positive, got {factor}")
    rms = []
    for c in contributions:
        sq = n = 0.0
        for k in keys:
            delta = c.state[k].double() - take(global_state[k].double(), slicer.dim_indices(k, c.units))
            sq += float((delta * delta).sum())
            n += delta.numel()
        rms.append(math.sqrt(sq / max(n, 1)))
    limit = factor * sorted(rms)[len(rms) // 2]
    clipped = []
    for c, size in zip(contributions, rms):
        scale = 1.0 if size <= limit or size == 0 else limit / size
        if scale == 1.0:
            clipped.append(c)
            continue
        state = dict(c.state)
        for k in keys:
            base = take(global_state[k], slicer.dim_indices(k, c.units))
            state[k] = (base + scale * (c.state[k] - base)).to(c.state[k].dtype)
        clipped.append(Contribution(c.units, state, c.weight))
    return clipped


def _spread(shape: torch.Size, dims: list[tuple[int, torch.Tensor]], sub: torch.Tensor) -> torch.Tensor:
    """A full-shape tensor holding ``sub`` at its coordinates and NaN elsewhere."""
    if not dims:
        return sub.clone()
    for d, idx in reversed(dims):
        wide = list(sub.shape)
        wide[d] = shape[d]
        sub = torch.full(wide, float("nan"), dtype=sub.dtype).index_copy_(d, idx, sub)
    return sub


def robust_average(
    global_state: Mapping[str, torch.Tensor],
    contributions: Sequence[Contribution],
    slicer: Slicer,
    keys: Sequence[str],
    mode: str,
    trim_fraction: float = 0.2,
) -> AggregateResult:
    """Like ``scatter_average`` (whose diagnostics it reports) with a robust per-coordinate statistic."""
    if mode not in ROBUST_MODES:
        raise ValueError(f"unknown robust aggregation {mode!r}; known: {', '.join(ROBUST_MODES)}")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim fraction must be in [0, 0.5), got {trim_fraction}")
    plain = scatter_average(global_state, contributions, slicer, keys)
    if mode == "none":
        return plain
    state = dict(plain.state)
    for k in keys:
        theta = global_state[k]
        values = torch.stack(
            [_spread(theta.shape, slicer.dim_indices(k, c.units), c.state[k].to(torch.float32)) for c in contributions]
        )  # [P, *shape], NaN = not covered
        if mode == "median":
            stat = torch.nanmedian(values, dim=0).values
        else:
            ordered = values.sort(dim=0).values  # NaN sorts last
            count = (~values.isnan()).sum(0)
            cut = torch.floor(trim_fraction * count)
            rank = torch.arange(len(contributions)).view(-1, *([1] * theta.ndim))
            keep = (rank >= cut) & (rank < count - cut)
            stat = torch.where(keep, ordered, 0.0).sum(0) / keep.sum(0).clamp(min=1)
            stat = torch.where(count > 0, stat, float("nan"))
        state[k] = torch.where(stat.isnan(), theta, stat.to(theta.dtype))
    return AggregateResult(state, plain.model_shift, plain.shared_fraction, plain.covered_fraction, plain.coverage_histogram, plain.shift_floor)
