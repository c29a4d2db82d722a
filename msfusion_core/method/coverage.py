"""Cumulative weight coverage: how often each parameter coordinate has been in a trained sub-model.

The server knows every plan, so it can count, per coordinate, the applied replies whose sub-model
contained it. Two summaries matter (the C1 benchmark logs both every round):

* the never-trained fraction: coordinates no sub-model has contained so far; the evaluated
  full-width model keeps them at their initial values.
* the count CV: the coefficient of variation (sd / mean) of the per-coordinate counts; 0 when
  every coordinate is trained equally often.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from msfusion_core.method.planner import ParticipantPlan
from msfusion_core.method.slicing import Slicer

COUNT_PREFIX = "train-count/"  # checkpoint key prefix: counts travel with θ so a resumed run keeps them


class TrainCounts:
    """Per-coordinate train counts for the parameters ``shapes`` (name → full shape)."""

    def __init__(self, slicer: Slicer, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.slicer = slicer
        self.counts = {k: torch.zeros(tuple(s), dtype=torch.int64) for k, s in shapes.items()}

    def add(self, plans: Iterable[ParticipantPlan]) -> None:
        """Count one sub-model per plan: +1 at every coordinate it contains."""
        for plan in plans:
            units = plan.unit_indices()
            for key, count in self.counts.items():
                if self.slicer.local_key(key, units) is None:
                    continue  # a block outside the plan's window
                positions = self.slicer.flat_positions(key, count.shape, units)
                if positions is None:
                    count += 1  # kept whole: in every sub-model
                else:
                    count.view(-1)[positions] += 1  # positions are distinct within one sub-model

    def summary(self) -> tuple[float, float]:
        """(never-trained fraction, count CV), from per-tensor sums: no concatenation of all counts."""
        n = sum(c.numel() for c in self.counts.values())
        if n == 0:
            return 1.0, float("nan")
        zeros = sum(int((c == 0).sum()) for c in self.counts.values())
        total = sum(float(c.sum()) for c in self.counts.values())
        squares = sum(float((c.double() ** 2).sum()) for c in self.counts.values())
        mean = total / n
        cv = math.sqrt(max(squares / n - mean * mean, 0.0)) / mean if mean > 0 else float("nan")
        return zeros / n, cv

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {COUNT_PREFIX + k: c for k, c in self.counts.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Counts saved by ``state_dict``; keys absent (a checkpoint from before counting) stay zero."""
        for key, count in self.counts.items():
            saved = state.get(COUNT_PREFIX + key)
            if saved is not None and tuple(saved.shape) == tuple(count.shape):
                count.copy_(saved)
