"""Overlap schedules o_t (SPEC §2): how much of each window its participants share, round by round.

- ``constant``, ``linear``, ``cosine``: functions of the round.
- ``adaptive`` (the abstract's; the rule is this project's): o follows the measured model shift,

      o_{t+1} = clip(o_t + η·(ρ_t − ρ*) − λ·(o_t − o_0), o_min, o_max),   ρ_t = d_t / floor_t,

  so shared coordinates are averaged over more participants when their updates disagree more than
  independent ones would; the leak λ keeps a persistent bias in ρ from winding o up to a bound.
- ``grow`` (the starts-as-small variant, core form only): o starts at 1 and is lowered by ``step``
  on a plateau of the validation loss: the mean over the last ``patience`` rounds is not
  ``min_improvement`` below the mean over the ``patience`` rounds before. Each step is on trial:
  after a window for recovery the next window's mean must beat the plateau's level, or the step is
  undone and o stays (``settled``). No trial spans an lr change or the run's end (``trial_barriers``).
  ``plateau-best`` is its first form (single losses against the best so far).

``docs/method.md`` gives the measured reason for each rule; ``docs/results.md`` has the runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEDULES = ("adaptive", "constant", "linear", "cosine", "grow", "plateau-best")
VALIDATION_DRIVEN = ("grow", "plateau-best")  # the schedules that read the server's validation loss


@dataclass
class OverlapState:
    """What a schedule learns during a run, and all a checkpoint restores of it."""

    current: float  # adaptive and grow: o_t
    losses: list[tuple[int, float]] = field(default_factory=list)  # grow: (round, loss) since o last changed
    changed_round: int = 0  # grow: the round o last changed
    best_loss: float | None = None  # plateau-best: best validation loss since o last changed
    best_round: int = 0  # plateau-best: the round it was measured
    trial_bar: float | None = None  # the loss a step on trial must beat (None: no trial)
    trial_round: int = 0  # grow: the round of that step
    trial_from: float = 1.0  # grow: the overlap before it
    settled: bool = False  # grow: a step was undone; o stays


@dataclass
class OverlapSchedule:
    kind: str = "adaptive"
    start: float = 0.5  # o_0 (constant value, or the first value of linear/cosine/adaptive)
    end: float = 0.1  # last value of linear/cosine
    num_rounds: int = 10  # length of the linear/cosine ramp
    eta: float = 0.2  # adaptive step size η
    target_shift: float = 1.0  # adaptive ρ*, the target for d_t / floor_t
    leak: float = 0.2  # adaptive λ: pull toward `start` per round, so a biased ρ_t cannot wind o up
    min_overlap: float = 0.0
    max_overlap: float = 0.9
    patience: int = 30  # grow: the window, in rounds, whose mean loss is compared with the window before
    step: float = 0.125  # grow: how much o is lowered each time
    min_improvement: float = 0.01  # grow: a relative loss decrease smaller than this is no improvement
    # grow: rounds no trial may span, the last round before each lr change and the run's last
    # round. They depend on the run's length, so the strategy sets them whenever a run starts
    # (``set_trial_barriers``); a step at round t waits while some barrier b has t <= b < t + 2·patience.
    trial_barriers: tuple[int, ...] = ()
    state: OverlapState = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown overlap schedule {self.kind!r}; known: {', '.join(SCHEDULES)}")
        for name in ("start", "end", "min_overlap", "max_overlap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"overlap {name} must be in [0, 1], got {value}")
        if self.patience < 1 or not 0.0 < self.step <= 1.0 or not 0.0 <= self.min_improvement < 1.0:
            raise ValueError(
                f"grow overlap needs patience >= 1, step in (0, 1] and min_improvement in [0, 1); "
                f"got {self.patience}, {self.step}, {self.min_improvement}"
            )
        if self.min_overlap > self.max_overlap:
            raise ValueError(f"min_overlap {self.min_overlap} > max_overlap {self.max_overlap}")
        if self.eta < 0 or self.target_shift < 0:
            raise ValueError(f"overlap eta and target_shift must be >= 0, got {self.eta} and {self.target_shift}")
        if not 0.0 <= self.leak <= 1.0:
            raise ValueError(f"overlap leak must be in [0, 1], got {self.leak}")
        self.state = OverlapState(1.0 if self.kind in VALIDATION_DRIVEN else self.start)  # grow starts as the small model

    def overlap(self, server_round: int) -> float:
        """o_t for round ``server_round`` (1-based, as Flower counts)."""
        if self.kind == "constant":
            return self.start
        if self.kind in ("adaptive", *VALIDATION_DRIVEN):
            return float(self.state.current)
        frac = min(max(server_round - 1, 0) / max(self.num_rounds - 1, 1), 1.0)
        if self.kind == "cosine":
            frac = 0.5 * (1.0 - math.cos(math.pi * frac))
        return self.start + (self.end - self.start) * frac

    def update(self, relative_shift: float) -> None:
        """Adaptive: one step of o toward the target, given ρ_t = d_t / floor_t of the last round."""
        if self.kind == "adaptive" and math.isfinite(relative_shift):
            pull = self.leak * (self.state.current - self.start)
            step = self.state.current + self.eta * (relative_shift - self.target_shift) - pull
            self.state.current = min(max(step, self.min_overlap), self.max_overlap)

    def observe_validation(self, server_round: int, loss: float) -> str | None:
        """Validation-driven rules: lower o by ``step`` on a plateau of the validation loss, and undo a step
        that does not pay (see the module docstring).

        Returns "stepped" when o was lowered (the caller keeps θ as it is now, to return to),
        "kept" when a step passed its trial (the copy is no longer needed) and "undone" when a step
        was undone; None otherwise."""
        if self.kind not in VALIDATION_DRIVEN or self.state.settled or not math.isfinite(loss):
            return None
        if self.kind == "plateau-best":
            return self._observe_against_best(server_round, loss)
        self.state.losses.append((int(server_round), float(loss)))
        if server_round - self.state.changed_round < 2 * self.patience:
            return None
        last = [v for t, v in self.state.losses if t > server_round - self.patience]
        before = [v for t, v in self.state.losses if server_round - 2 * self.patience < t <= server_round - self.patience]
        if not last or not before:
            return None
        last_mean, before_mean = sum(last) / len(last), sum(before) / len(before)
        if self.state.trial_bar is not None:
            if last_mean > self.state.trial_bar * (1.0 - self.min_improvement):
                self.state.current, self.state.trial_bar, self.state.settled = self.state.trial_from, None, True
                return "undone"
            self.state.trial_bar, event = None, "kept"  # the grown model beat the small one's plateau: the step stays
        else:
            event = None
        plateau = last_mean > before_mean * (1.0 - self.min_improvement)
        if plateau and self.state.current > self.min_overlap and not self.trial_would_span_barrier(server_round):
            self.state.trial_bar, self.state.trial_round, self.state.trial_from = last_mean, int(server_round), self.state.current
            self.state.current = max(self.state.current - self.step, self.min_overlap)
            self.state.losses, self.state.changed_round = [], int(server_round)
            return "stepped"
        return event

    def trial_would_span_barrier(self, server_round: int) -> bool:
        """Would a step now be judged across an lr change, or after the run has ended?"""
        return any(server_round <= b < server_round + 2 * self.patience for b in self.trial_barriers)

    def _observe_against_best(self, server_round: int, loss: float) -> str | None:
        """``plateau-best``: lower o once the loss has not beaten its best by ``min_improvement`` for
        ``patience`` rounds; undo a step whose loss is not back to that best within ``patience``."""
        event = None
        if self.state.trial_bar is not None:
            if loss <= self.state.trial_bar:
                self.state.trial_bar, event = None, "kept"  # the grown model has caught up: the step stays
            elif server_round - self.state.trial_round >= self.patience:
                self.state.current, self.state.trial_bar, self.state.settled = self.state.trial_from, None, True
                return "undone"
        if self.state.best_loss is None or loss < self.state.best_loss * (1.0 - self.min_improvement):
            self.state.best_loss, self.state.best_round = float(loss), int(server_round)
        elif server_round - self.state.best_round >= self.patience and self.state.current > self.min_overlap and self.state.trial_bar is None:
            self.state.trial_bar, self.state.trial_round, self.state.trial_from = self.state.best_loss, int(server_round), self.state.current
            self.state.current = max(self.state.current - self.step, self.min_overlap)
            self.state.best_loss, self.state.best_round = None, int(server_round)  # judged afresh from the next measurement
            return "stepped"
        return event

    def set_trial_barriers(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        """The rounds no growth trial may span: the last round at each lr and the run's last round."""
        self.trial_barriers = tuple(sorted({*lr_changes, int(last_round)}))

    @property
    def current(self) -> float:
        return self.state.current

    def state_dict(self) -> dict[str, Any]:
        """The run-time state only: the configuration is the run's (its settings), and what
        depends on the run's length is recomputed when a (resumed) run starts."""
        return asdict(self.state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the run-time state (a checkpoint written before state and configuration were
        apart holds both: only the state's fields are read)."""
        known = {f for f in OverlapState.__dataclass_fields__}
        values = {k: v for k, v in state.items() if k in known}
        values["losses"] = [tuple(x) for x in values.get("losses", [])]
        self.state = OverlapState(**values)
