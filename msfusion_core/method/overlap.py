"""Overlap schedules o_t (SPEC §2): how much of each window its participants share, round by round.

One class per rule, chosen by name through ``SCHEDULES``:

- ``constant``: o_t = o_0.
- ``adaptive`` (the abstract's; the rule is this project's): o follows the measured model shift,

      o_{t+1} = clip(o_t + η·(ρ_t − ρ*) − λ·(o_t − o_0), 0, 0.9),   ρ_t = d_t / floor_t,

  so shared coordinates are averaged over more participants when their updates disagree more than
  independent ones would; the leak λ keeps a persistent bias in ρ from winding o up to a bound.
- ``grow`` (the starts-as-small variant): o starts at 1, where everyone trains the width-r core,
  and is lowered by ``step`` on a plateau of the validation loss: the mean over the last
  ``patience`` rounds is not ``min_improvement`` below the mean over the ``patience`` rounds
  before. Each step is on trial: after a window for recovery the next window's mean must beat the
  plateau's level, or the step is undone and o stays (``settled``). No trial spans an lr change or
  the run's end.

Each schedule keeps its configuration apart from its state (``OverlapState``), and a checkpoint
holds the state only: what depends on the run's length (grow's patience, by default a tenth of the
run, and its trial barriers) is set whenever a run starts (``set_run_length``), so a run resumed
with another length takes it. ``form`` names the window layout the rule is for: the planner's
registry maps it to a planner class. ``docs/method.md`` gives the measured reason for each rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass
class OverlapState:
    """What a schedule learns during a run, and all a checkpoint restores of it."""

    current: float  # o_t
    losses: list[tuple[int, float]] = field(default_factory=list)  # grow: (round, loss) since o last changed
    changed_round: int = 0  # grow: the round o last changed
    trial_bar: float | None = None  # grow: the loss a step on trial must beat (None: no trial)
    trial_round: int = 0  # grow: the round of that step
    trial_from: float = 1.0  # grow: the overlap before it
    settled: bool = False  # grow: a step was undone; o stays


def _check_overlap(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"{what} must be in [0, 1], got {value}")
    return float(value)


class ConstantOverlap:
    """o_t = ``start`` every round."""

    name: ClassVar[str] = "constant"
    form: ClassVar[str] = "spread"  # windows spread across participants (planner.SpreadPlanner)
    needs_validation: ClassVar[bool] = False

    def __init__(self, start: float = 0.5) -> None:
        self.start = _check_overlap(start, "overlap start")
        self.state = OverlapState(self.start)

    @classmethod
    def from_start(cls, start: float) -> ConstantOverlap:
        """The schedule as a run config gives it: ``overlap-start`` is o_0."""
        return cls(start)

    @property
    def current(self) -> float:
        return self.state.current

    def overlap(self, server_round: int) -> float:
        """o_t for round ``server_round`` (1-based, as Flower counts)."""
        return self.state.current

    def observe_shift(self, relative_shift: float) -> None:
        """ρ_t = d_t / floor_t, measured when the last round was aggregated."""

    def observe_validation(self, server_round: int, loss: float) -> str | None:
        """The evaluated model's validation loss after ``server_round``; see ``GrowOverlap``."""
        return None

    def set_run_length(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        """Set what depends on the run's length: its last round, and the last round at each lr."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state (a checkpoint from before state and configuration were apart holds
        both: only the state's fields are read)."""
        values = {k: v for k, v in state.items() if k in OverlapState.__dataclass_fields__}
        values["losses"] = [tuple(x) for x in values.get("losses", [])]
        self.state = OverlapState(**values)


class AdaptiveOverlap(ConstantOverlap):
    """The abstract's adaptive overlap, from ``start``, steered by the measured model shift."""

    name: ClassVar[str] = "adaptive"
    ETA: ClassVar[float] = 0.2  # step size η
    TARGET_SHIFT: ClassVar[float] = 1.0  # ρ*: more overlap only when shared updates disagree more than independent ones would
    LEAK: ClassVar[float] = 0.2  # λ: the pull toward o_0 per round, so a biased ρ_t cannot wind o up to a bound
    MAX_OVERLAP: ClassVar[float] = 0.9

    def observe_shift(self, relative_shift: float) -> None:
        if math.isfinite(relative_shift):
            o = self.state.current
            step = o + self.ETA * (relative_shift - self.TARGET_SHIFT) - self.LEAK * (o - self.start)
            self.state.current = min(max(step, 0.0), self.MAX_OVERLAP)


class GrowOverlap(ConstantOverlap):
    """The starts-as-small variant: o from 1, lowered on validation plateaus, each step on trial."""

    name: ClassVar[str] = "grow"
    form: ClassVar[str] = "core"  # a shared core plus a double-shifted remainder (planner.CorePlanner)
    needs_validation: ClassVar[bool] = True

    def __init__(self, patience: int | None = None, step: float = 0.125, min_improvement: float = 0.01) -> None:
        """``patience``: the window, in rounds, whose mean loss is compared with the window before;
        None: a tenth of the run (30 of C1's 300 rounds), set when the run starts."""
        if patience is not None and patience < 1 or not 0.0 < step <= 1.0 or not 0.0 <= min_improvement < 1.0:
            raise ValueError(f"grow needs patience >= 1, step in (0, 1] and min_improvement in [0, 1); got {patience}, {step}, {min_improvement}")
        super().__init__(1.0)
        self.fixed_patience, self.step, self.min_improvement = patience, step, min_improvement
        self.patience = patience or 1
        self.trial_barriers: tuple[int, ...] = ()

    @classmethod
    def from_start(cls, start: float) -> GrowOverlap:
        return cls()  # grow starts as the small model, o = 1, whatever o_0 says

    def set_run_length(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        """Patience (unless fixed) is a tenth of the run. No trial may span the last round at an lr
        or the run's last round: a step at round t waits while some barrier b has t <= b < t + 2·patience."""
        self.patience = self.fixed_patience or max(1, round(last_round / 10))
        self.trial_barriers = tuple(sorted({*lr_changes, int(last_round)}))

    def observe_validation(self, server_round: int, loss: float) -> str | None:
        """Returns "stepped" when o was lowered (the caller keeps θ as it is now, to return to),
        "kept" when a step passed its trial (the copy is no longer needed) and "undone" when a step
        was undone; None otherwise."""
        state = self.state
        if state.settled or not math.isfinite(loss):
            return None
        state.losses.append((int(server_round), float(loss)))
        if server_round - state.changed_round < 2 * self.patience:
            return None
        last = [v for t, v in state.losses if t > server_round - self.patience]
        before = [v for t, v in state.losses if server_round - 2 * self.patience < t <= server_round - self.patience]
        if not last or not before:
            return None
        last_mean, before_mean = sum(last) / len(last), sum(before) / len(before)
        event = None
        if state.trial_bar is not None:
            if last_mean > state.trial_bar * (1.0 - self.min_improvement):
                state.current, state.trial_bar, state.settled = state.trial_from, None, True
                return "undone"
            state.trial_bar, event = None, "kept"  # the grown model beat the small one's plateau: the step stays
        plateau = last_mean > before_mean * (1.0 - self.min_improvement)
        if plateau and state.current > 0.0 and not self.trial_would_span_barrier(server_round):
            state.trial_bar, state.trial_round, state.trial_from = last_mean, int(server_round), state.current
            state.current = max(state.current - self.step, 0.0)
            state.losses, state.changed_round = [], int(server_round)
            return "stepped"
        return event

    def trial_would_span_barrier(self, server_round: int) -> bool:
        """Would a step now be judged across an lr change, or after the run has ended?"""
        return any(server_round <= b < server_round + 2 * self.patience for b in self.trial_barriers)


SCHEDULES: dict[str, type[ConstantOverlap]] = {"adaptive": AdaptiveOverlap, "constant": ConstantOverlap, "grow": GrowOverlap}
Schedule = ConstantOverlap  # the interface every schedule has


def make_schedule(name: str, start: float = 0.5) -> ConstantOverlap:
    """A schedule by name (run config ``overlap-schedule``); ``start`` is o_0 (grow starts at 1)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown overlap schedule {name!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[name].from_start(start)
