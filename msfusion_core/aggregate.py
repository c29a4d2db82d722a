"""Overlap-weighted aggregation of sub-models into the global model (SPEC §3).

For every coordinate e of θ: θ_e ← θ_e + Σ_{n∈C_e} w_n (θ_{n,e} − θ_e) / Σ_{n∈C_e} w_n, with C_e the
participants whose sub-model holds e. This is the weighted average of the returned values, written
on deltas so that participants returning what they received leave θ bit-identical, and accumulated
in float64 so the result does not depend on the order of the participants beyond rounding of
the final cast. Coordinates nobody trained keep their value.

Each participant costs a few ``index_add_`` calls per tensor over precomputed flat positions; the
model shift d_t falls out of one extra accumulator (Σ w Δ²), with no second pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from msfusion_core.slicing import Slicer, UnitIndices


@dataclass(frozen=True)
class Contribution:
    """One participant's returned sub-tensors, the units they cover, and its aggregation weight."""

    units: UnitIndices
    state: Mapping[str, torch.Tensor]
    weight: float


@dataclass(frozen=True)
class AggregateResult:
    state: dict[str, torch.Tensor]
    model_shift: float  # d_t over coordinates covered by ≥ 2 participants (nan if there are none)
    shared_fraction: float  # fraction of aggregated coordinates covered by ≥ 2 participants
    covered_fraction: float  # fraction of aggregated coordinates covered by ≥ 1 participant


def scatter_average(
    global_state: Mapping[str, torch.Tensor],
    contributions: Sequence[Contribution],
    slicer: Slicer,
    keys: Sequence[str] | None = None,
) -> AggregateResult:
    """Aggregate ``contributions`` into a new state (``keys``: which tensors to aggregate; default
    the keys of the first contribution). Tensors not aggregated are returned unchanged."""
    if not contributions:
        raise ValueError("scatter_average needs at least one contribution")
    if any(not (c.weight > 0) for c in contributions):
        raise ValueError("every contribution needs a positive weight")
    keys = list(keys if keys is not None else contributions[0].state.keys())
    new_state = dict(global_state)
    shift_num = shift_den = 0.0
    shared = covered = total = 0
    for name in keys:
        theta = global_state[name]
        flat_theta = theta.reshape(-1).to(torch.float64)
        num = torch.zeros_like(flat_theta)  # Σ w Δ
        den = torch.zeros_like(flat_theta)  # Σ w
        sq = torch.zeros_like(flat_theta)  # Σ w Δ²
        count = torch.zeros_like(flat_theta)  # |C_e|
        for c in contributions:
            pos = slicer.flat_positions(name, theta.shape, c.units)
            delta = c.state[name].reshape(-1).to(torch.float64) - (flat_theta if pos is None else flat_theta[pos])
            w = torch.tensor(float(c.weight), dtype=torch.float64)
            if pos is None:
                num += w * delta
                den += w
                sq += w * delta * delta
                count += 1
            else:
                num.index_add_(0, pos, w * delta)
                den.index_add_(0, pos, w.expand(pos.numel()))
                sq.index_add_(0, pos, w * delta * delta)
                count.index_add_(0, pos, torch.ones(()).to(torch.float64).expand(pos.numel()))
        hit = den > 0
        mean = torch.where(hit, num / torch.where(hit, den, torch.ones_like(den)), torch.zeros_like(num))
        new_state[name] = (flat_theta + mean).to(theta.dtype).reshape(theta.shape)
        # Σ_n w_n‖Δ_n − Δ̄‖² = Σ w Δ² − (Σ w)·Δ̄² per coordinate, since Σ w Δ = (Σ w)·Δ̄.
        multi = count >= 2
        shift_num += float((sq - den * mean * mean)[multi].sum())
        shift_den += float(sq[multi].sum())
        shared += int(multi.sum())
        covered += int(hit.sum())
        total += flat_theta.numel()
    model_shift = shift_num / shift_den if shift_den > 0 else float("nan")
    return AggregateResult(
        new_state, max(0.0, model_shift) if shift_den > 0 else model_shift, shared / max(total, 1), covered / max(total, 1)
    )
