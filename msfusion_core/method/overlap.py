"""Overlap schedules o_t (SPEC §2).

``constant``, ``linear`` and ``cosine`` are functions of the round. ``adaptive`` (this project's
design; the paper's abstract only says the overlap is adaptive) follows the measured model shift:

    o_{t+1} = clip(o_t + η·(ρ_t − ρ*) − λ·(o_t − o_0), o_min, o_max),   ρ_t = d_t / floor_t

More disagreement between participants on shared coordinates asks for more overlap, so those
coordinates are averaged over more participants.

Why d_t relative to its floor: uncorrelated updates from k participants give d_t ≈ (k − 1)/k, and
more overlap means more participants per coordinate, so the raw d_t rises with the overlap itself.
Steering the raw d_t to an absolute d* fed back on itself: on CIFAR-10 (E1) d_t sat at its floor,
above d* = 0.5, and the overlap ran to o_max in ten rounds, halving the spread and costing 9 points
against the same method at constant overlap. ρ* = 1 (the default) asks for more overlap only when
shared updates disagree more than independent ones would, and for more coverage when they agree.

Why the leak λ toward o_0: ρ_t hardly responds to o (its floor moves with the overlap), so a pure
integrator (λ = 0) turns any persistent bias in ρ into a ramp to a bound. Non-IID updates on shared
coordinates disagree a little more than noise does: on CIFAR-10 at P = 8, r = 1/4, ρ_t sat at
1.03–1.14 every round, o ran from 0.5 to o_max = 0.9 by round 22, per-round coverage fell from 38 %
to 15 % and accuracy stalled 8 points below FedRolex. With the leak the rule settles where the two
terms balance, o* = o_0 + (η/λ)·(ρ̄ − ρ*): a sustained 10 % excess moves the overlap by 0.1 at the
defaults, not to the bound. Measured there: 0.163 final accuracy with the integrator, 0.2375 with the
leak, and 0.297 with o held at 0.5, so this rule does not yet beat the constant schedule anywhere
we measured (docs/results.md, E2).

``grow`` (the starts-as-small variant) is driven by validation instead: o starts at 1, so
with ``overlap-form = "core"`` every participant trains the width-r model, and it is lowered by
``step`` once the global model's loss on the server's held-out split has stopped improving. Small
first, then grow, as gradual-restoration and successive-training methods find.

The test compares window means: the mean loss over the last ``patience`` rounds against the mean
over the ``patience`` rounds before, since o last changed; a relative decrease below
``min_improvement`` is a plateau. The first form of this rule (``plateau-best``, kept for the runs
made with it) compared each loss with the best so far. A round-to-round swing of 1-4 % on 2,000
rows beats a 1 % bar by chance: on C1 (r = 1/4, seed 0) it saw a plateau at round 80, while the same
model kept as ``small`` went on to lose 6 % more in ten rounds; the step cost 2 points to the end.
Over C1's `small` curve the window test first sees a plateau at round 210, after the first lr decay.

Each lowering is on trial. Lowering o takes trained units out of the shared core, and most
sub-models then lack them: on C1 (r = 1/4) one step from 1 to 0.75 took accuracy from 0.49 to 0.26.
After a step the first window is for recovery; the mean over the second must be below the plateau's
level (the last window's mean before the step) by ``min_improvement``. That bar asks the grown model
to beat what the small one had settled at, not merely to return to it: ``plateau-best`` kept a step
whose loss was back to its old best, which a model still improving on its own reaches anyway (C1's
seeds 0 and 2 kept such a step and ended 2-3 points below ``small``). A step that fails is undone
and the overlap stays where it was for the rest of the run (``settled``), and the server returns θ
to its copy from the round of the step: the trial's rounds are lost, but on a plateau they were
worth nothing to the model the step left. (``plateau-best`` instead silenced the units outside the
core and kept the trial's θ; its core, whose last units most sub-models had lacked for the trial,
was then below its plateau, and the lr was low by then: on C1 at r = 1/4, seed 0, the window rule
with that undo fell from 0.504 before its step, at round 210, to 0.494 at round 300.)

A trial must not span a change of the lr, nor the end of the run. The lr decay lowers the loss by
itself, so a trial across it passes whatever the step did: on C1 at r = 1/2, seed 2, a step at round
150 (the last round at the first lr) passed its trial at round 210 and kept o = 0.875, and the run
ended 1.3 points below ``small``; the steps of the other five grow5 runs (rounds 200-210) were
judged across the decay at round 225. And a step too close to the end is never judged. So a
plateau within 2·``patience`` rounds before an lr change or the last round waits (``trial_barriers``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEDULES = ("adaptive", "constant", "linear", "cosine", "grow", "plateau-best")
VALIDATION_DRIVEN = ("grow", "plateau-best")  # the schedules that read the server's validation loss


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
    current: float | None = None  # adaptive and grow state o_t
    losses: list[tuple[int, float]] = field(default_factory=list)  # grow: (round, loss) since o last changed
    changed_round: int = 0  # grow: the round o last changed
    best_loss: float | None = None  # plateau-best: best validation loss since o last changed
    best_round: int = 0  # plateau-best: the round it was measured
    trial_bar: float | None = None  # the loss a step on trial must beat (None: no trial)
    trial_round: int = 0  # grow: the round of that step
    trial_from: float = 1.0  # grow: the overlap before it
    settled: bool = False  # grow: a step was undone; o stays
    # grow: rounds no trial may span, the last round before each lr change and the run's last
    # round (the strategy sets them when a run starts: ``set_trial_barriers``). A step at round t waits while some barrier b has t <= b < t + 2·patience.
    trial_barriers: tuple[int, ...] = ()

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
        if self.current is None:  # grow starts as the small model, whatever ``start`` says
            self.current = 1.0 if self.kind in VALIDATION_DRIVEN else self.start

    def overlap(self, server_round: int) -> float:
        """o_t for round ``server_round`` (1-based, as Flower counts)."""
        if self.kind == "constant":
            return self.start
        if self.kind in ("adaptive", *VALIDATION_DRIVEN):
            return float(self.current)
        frac = min(max(server_round - 1, 0) / max(self.num_rounds - 1, 1), 1.0)
        if self.kind == "cosine":
            frac = 0.5 * (1.0 - math.cos(math.pi * frac))
        return self.start + (self.end - self.start) * frac

    def update(self, relative_shift: float) -> None:
        """Adaptive: one step of o toward the target, given ρ_t = d_t / floor_t of the last round."""
        if self.kind == "adaptive" and math.isfinite(relative_shift):
            pull = self.leak * (self.current - self.start)
            step = self.current + self.eta * (relative_shift - self.target_shift) - pull
            self.current = min(max(step, self.min_overlap), self.max_overlap)

    def observe_validation(self, server_round: int, loss: float) -> str | None:
        """Validation-driven rules: lower o by ``step`` on a plateau of the validation loss, and undo a step
        that does not pay (see the module docstring).

        Returns "stepped" when o was lowered (the caller keeps θ as it is now, to return to),
        "kept" when a step passed its trial (the copy is no longer needed) and "undone" when a step
        was undone; None otherwise."""
        if self.kind not in VALIDATION_DRIVEN or self.settled or not math.isfinite(loss):
            return None
        if self.kind == "plateau-best":
            return self._observe_against_best(server_round, loss)
        self.losses.append((int(server_round), float(loss)))
        if server_round - self.changed_round < 2 * self.patience:
            return None
        last = [v for t, v in self.losses if t > server_round - self.patience]
        before = [v for t, v in self.losses if server_round - 2 * self.patience < t <= server_round - self.patience]
        if not last or not before:
            return None
        last_mean, before_mean = sum(last) / len(last), sum(before) / len(before)
        if self.trial_bar is not None:
            if last_mean > self.trial_bar * (1.0 - self.min_improvement):
                self.current, self.trial_bar, self.settled = self.trial_from, None, True
                return "undone"
            self.trial_bar, event = None, "kept"  # the grown model beat the small one's plateau: the step stays
        else:
            event = None
        plateau = last_mean > before_mean * (1.0 - self.min_improvement)
        if plateau and self.current > self.min_overlap and not self.trial_would_span_barrier(server_round):
            self.trial_bar, self.trial_round, self.trial_from = last_mean, int(server_round), self.current
            self.current = max(self.current - self.step, self.min_overlap)
            self.losses, self.changed_round = [], int(server_round)
            return "stepped"
        return event

    def trial_would_span_barrier(self, server_round: int) -> bool:
        """Would a step now be judged across an lr change, or after the run has ended?"""
        return any(server_round <= b < server_round + 2 * self.patience for b in self.trial_barriers)

    def _observe_against_best(self, server_round: int, loss: float) -> str | None:
        """``plateau-best``: lower o once the loss has not beaten its best by ``min_improvement`` for
        ``patience`` rounds; undo a step whose loss is not back to that best within ``patience``."""
        event = None
        if self.trial_bar is not None:
            if loss <= self.trial_bar:
                self.trial_bar, event = None, "kept"  # the grown model has caught up: the step stays
            elif server_round - self.trial_round >= self.patience:
                self.current, self.trial_bar, self.settled = self.trial_from, None, True
                return "undone"
        if self.best_loss is None or loss < self.best_loss * (1.0 - self.min_improvement):
            self.best_loss, self.best_round = float(loss), int(server_round)
        elif server_round - self.best_round >= self.patience and self.current > self.min_overlap and self.trial_bar is None:
            self.trial_bar, self.trial_round, self.trial_from = self.best_loss, int(server_round), self.current
            self.current = max(self.current - self.step, self.min_overlap)
            self.best_loss, self.best_round = None, int(server_round)  # judged afresh from the next measurement
            return "stepped"
        return event

    def set_trial_barriers(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        """The rounds no growth trial may span: the last round at each lr and the run's last round."""
        self.trial_barriers = tuple(sorted({*lr_changes, int(last_round)}))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the run-time state. The barriers are not restored: they depend on the run's
        length, which a resumed run may change, and the strategy sets them anew when it starts."""
        for key, value in state.items():
            if key == "losses":
                value = [tuple(x) for x in value]
            elif key == "trial_barriers":
                continue
            setattr(self, key, value)
