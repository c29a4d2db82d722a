"""Overlap-weighted aggregation of sub-models into the global model (SPEC §3).

For every coordinate e of θ: θ_e ← θ_e + Σ_{n∈C_e} w_n (θ_{n,e} − θ_e) / Σ_{n∈C_e} w_n, with C_e the
participants whose sub-model holds e. This is the weighted average of the returned values, written
on deltas so that participants returning what they received leave θ bit-identical. Coordinates
nobody trained keep their value.

Vectorised per tensor: a participant's delta is scattered back with one ``index_add_`` per bound
dimension (a sub-tensor is the Cartesian product of per-dimension indices), and the weights
Σ_{n∈C_e} w_n never need a scatter at all: they are the einsum over participants of the outer
product of per-dimension membership masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from msfusion_core.method.slicing import Slicer, UnitIndices, take


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
    coverage_histogram: dict[int, int]  # {c: number of aggregated coordinates trained by c participants}
    # What d_t would be if the updates were independent (zero-mean, equal size) at this coverage:
    # per coordinate 1 − Σw²/(Σw)², i.e. (k − 1)/k for k equal weights. d_t near it means the
    # participants' updates are as uncorrelated as noise; well below it, they agree.
    shift_floor: float = float("nan")

    @property
    def relative_shift(self) -> float:
        """d_t / floor: 0 when participants agree, 1 when their shared updates are as uncorrelated
        as noise, above 1 when they pull against each other (nan without shared coordinates)."""
        if not (math.isfinite(self.model_shift) and math.isfinite(self.shift_floor)) or self.shift_floor <= 0:
            return float("nan")
        return self.model_shift / self.shift_floor


def scatter_average(
    global_state: Mapping[str, torch.Tensor],
    contributions: Sequence[Contribution],
    slicer: Slicer,
    keys: Sequence[str] | None = None,
) -> AggregateResult:
    """Aggregate ``contributions`` (states under the full model's keys) into a new state (``keys``:
    which tensors to aggregate; default the keys of the first contribution). A tensor is averaged
    over the contributions that hold it (a block, over those whose window has it); tensors nobody
    holds, or not aggregated, are returned unchanged."""
    if not contributions:
        raise ValueError("scatter_average needs at least one contribution")
    if any(not (c.weight > 0) for c in contributions):
        raise ValueError("every contribution needs a positive weight")
    keys = list(keys if keys is not None else contributions[0].state.keys())
    new_state = dict(global_state)
    shift_num = shift_den = floor_num = 0.0
    shared = covered = total = 0
    histogram = torch.zeros(len(contributions) + 1, dtype=torch.long)
    for name in keys:
        theta = global_state[name]
        total += theta.numel()
        # Those who hold the tensor: everyone, but for a block only those whose window has it.
        holders = [c for c in contributions if name in c.state]
        if not holders:
            histogram[0] += theta.numel()
            continue
        weights = torch.tensor([float(c.weight) for c in holders], dtype=torch.float64)
        acc = torch.float64 if theta.dtype == torch.float64 else torch.float32
        theta_acc = theta.to(acc)
        dims = [slicer.dim_indices(name, c.units) for c in holders]
        num = torch.zeros_like(theta_acc)  # Σ w Δ
        sq = torch.zeros_like(theta_acc)  # Σ w Δ²
        for c, w, d in zip(holders, weights.tolist(), dims):
            delta = c.state[name].to(acc) - take(theta_acc, d)
            _scatter_add(num, d, delta * w)
            _scatter_add(sq, d, delta * delta * w)
        den = _coverage(theta.shape, dims, weights).to(acc).expand(theta.shape)  # Σ_{n∈C_e} w_n
        count = _coverage(theta.shape, dims, torch.ones_like(weights)).expand(theta.shape)  # |C_e|
        den_sq = _coverage(theta.shape, dims, weights * weights).to(acc).expand(theta.shape)  # Σ_{n∈C_e} w_n²
        hit = den > 0
        mean = torch.where(hit, num / torch.where(hit, den, torch.ones_like(den)), torch.zeros_like(num))
        new_state[name] = (theta_acc + mean).to(theta.dtype)
        # d_t on coordinates covered by ≥ 2 participants: Σ w‖Δ_n − Δ̄‖² / Σ w‖Δ_n‖², where per
        # coordinate Σ_n w_n (Δ_n − Δ̄)² = Σ w Δ² − (Σ w)·Δ̄², since Σ w Δ = (Σ w)·Δ̄.
        multi = count >= 2
        shift_num += float(torch.where(multi, sq - den * mean * mean, 0.0).sum())
        shift_den += float(torch.where(multi, sq, 0.0).sum())
        floor = 1.0 - den_sq / torch.where(multi, den * den, torch.ones_like(den))
        floor_num += float(torch.where(multi, floor * sq, 0.0).sum())
        histogram += torch.bincount(count.reshape(-1).long(), minlength=len(contributions) + 1)
        shared += int(multi.sum())
        covered += int(hit.sum())
    model_shift = max(0.0, shift_num / shift_den) if shift_den > 0 else float("nan")
    hist = {c: int(n) for c, n in enumerate(histogram.tolist()) if n}
    floor = floor_num / shift_den if shift_den > 0 else float("nan")
    return AggregateResult(new_state, model_shift, shared / max(total, 1), covered / max(total, 1), hist, floor)


def _scatter_add(out: torch.Tensor, dims: list[tuple[int, torch.Tensor]], sub: torch.Tensor) -> None:
    """out[Cartesian product of dims] += sub, one index_add_ per bound dimension."""
    if not dims:
        out += sub
        return
    for d, idx in reversed(dims[1:]):  # widen the sub-tensor to full size along all but one dim
        shape = list(sub.shape)
        shape[d] = out.shape[d]
        sub = torch.zeros(shape, dtype=sub.dtype).index_add_(d, idx, sub)
    out.index_add_(dims[0][0], dims[0][1], sub)


def _coverage(shape: torch.Size, dims: Sequence[list[tuple[int, torch.Tensor]]], weights: torch.Tensor) -> torch.Tensor:
    """Σ_n w_n · [e ∈ sub-model n] for every coordinate e, broadcastable to ``shape``.

    Membership of a Cartesian product is the product of per-dimension memberships, so the sum is
    an einsum over participants of outer products of per-dimension masks."""
    bound = [d for d, _ in dims[0]] if dims else []
    if not bound:
        return weights.sum().reshape((1,) * len(shape))
    masks = []
    for j, d in enumerate(bound):
        mask = torch.zeros(len(dims), shape[d], dtype=weights.dtype)
        for n, per_dim in enumerate(dims):
            mask[n, per_dim[j][1]] = 1.0
        masks.append(mask)
    cov = torch.einsum(_einsum_spec(len(bound)), weights, *masks)
    view = [1] * len(shape)
    for d in bound:
        view[d] = shape[d]
    return cov.reshape(view)


def _einsum_spec(n: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxy"[:n]
    return "z," + ",".join(f"z{l}" for l in letters) + "->" + letters
