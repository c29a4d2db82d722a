"""Overlap schedules o_t (SPEC §2): how much of each window its participants share, round by round.

- ``constant``: o_t = o_0.
- ``adaptive`` (the abstract's; the rule is this project's): o follows the measured model shift,

      o_{t+1} = clip(o_t + η·(ρ_t − ρ*) − λ·(o_t − o_0), 0, 0.9),   ρ_t = d_t / floor_t,

  so shared coordinates are averaged over more participants when their updates disagree more than
  independent ones would; the leak λ keeps a persistent bias in ρ from winding o up to a bound.

A checkpoint holds o_t only (``state_dict``); o_0 is configuration. ``docs/method.md`` gives the
measured reason for each rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar


def check_overlap(value: float, what: str = "o_0, the overlap start") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return float(value)


class ConstantOverlap:
    """o_t = ``start`` every round."""

    name: ClassVar[str] = "constant"

    def __init__(self, start: float = 0.5) -> None:
        self.start = check_overlap(start)
        self.current = self.start

    def overlap(self, server_round: int) -> float:
        """o_t for round ``server_round`` (1-based, as Flower counts)."""
        return self.current

    def observe_shift(self, relative_shift: float) -> None:
        """ρ_t = d_t / floor_t, measured when the last round was aggregated."""

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.current = check_overlap(state["current"], "a checkpoint's overlap")


class AdaptiveOverlap(ConstantOverlap):
    """The abstract's adaptive overlap, from ``start``, steered by the measured model shift."""

    name: ClassVar[str] = "adaptive"
    ETA: ClassVar[float] = 0.2  # step size η
    TARGET_SHIFT: ClassVar[float] = 1.0  # ρ*: more overlap only when shared updates disagree more than independent ones would
    LEAK: ClassVar[float] = 0.2  # λ: the pull toward o_0 per round, so a biased ρ_t cannot wind o up to a bound
    MAX_OVERLAP: ClassVar[float] = 0.9

    def observe_shift(self, relative_shift: float) -> None:
        if math.isfinite(relative_shift):
            o = self.current
            step = o + self.ETA * (relative_shift - self.TARGET_SHIFT) - self.LEAK * (o - self.start)
            self.current = min(max(step, 0.0), self.MAX_OVERLAP)


Schedule = ConstantOverlap  # the interface every schedule has
SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (AdaptiveOverlap, ConstantOverlap)}


def make_schedule(name: str, start: float = 0.5) -> Schedule:
    """A schedule by name (run config ``overlap-schedule``); ``start`` is o_0."""
    if name not in SCHEDULES:
        raise ValueError(f"overlap-schedule must be one of {', '.join(SCHEDULES)}; got {name!r}")
    return SCHEDULES[name](start)
