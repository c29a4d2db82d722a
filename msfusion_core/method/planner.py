"""Planners: which units of every width group each participant trains in a round (SPEC §2).

Pure numpy, no torch, no Flower. A plan is deterministic from (seed, round, participant list,
overlap state), so a receiver can rebuild it from its compact form and verify it.

Under ``overlap-form = "spread"`` windows are cyclic and contiguous: participant slot p (position in
the id-sorted participant list) of P gets, for a group of K units and capacity r,

    m = clamp(round(r·K), 1, K)
    s = (floor(p·c·K / P) − t·δ) mod K
    I = {(s + j) mod K : j < m}

The inter-participant spread c ∈ [0, 1] sets the overlap (c = 0: everyone shares one window, which
is FedRolex's rule; c = 1: windows evenly spaced). The inter-round shift rolls windows toward lower
indices by δ units per round: the direction of FedRolex's ``torch.roll(arange(K), t)[:m]``, which
the issue fixes (SPEC §2 writes ``+t·δ``; only the direction differs).

Under ``overlap-form = "core"`` the overlap is a shared core instead: every participant trains the
first c = round(o·m) units of the group, and a double-shifted remainder of m − c units, a cyclic
window over the K − c units after the core, evenly spaced across participants (spread 1):

    I = {0, …, c − 1} ∪ {c + (s + j) mod (K − c) : j < m − c}

o = 1 is the width-r ``small`` model embedded in the full one (with the non-core units silenced at
initialisation: msfusion_core.method.growth); o = 0 is pure double shifting.

An active width a < 1 keeps the remainder windows inside the first S = max(m, round(a·K)) units:
K − c becomes S − c above, and units S … K − 1 are never trained (and stay silenced). At r = 1/4
over the whole group a unit past the core is in about one sub-model in K/(m − c) ≈ 30 at o = 0.875;
within S = 1.5·m it is in (m − c)/(S − c) of them, so the model the participants grow is one they
can train densely.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from msfusion_core.method.overlap import VALIDATION_DRIVEN, OverlapSchedule

PLANNER_NAMES = ("msfusion", "fedrolex", "heterofl", "fd", "full", "small")


def window_length(capacity: float, size: int) -> int:
    """m = clamp(round(r·K), 1, K)."""
    return min(max(round(capacity * size), 1), size)


def check_capacity(capacity: float, who: object = "participant") -> float:
    capacity = float(capacity)
    if not (0.0 < capacity <= 1.0) or math.isnan(capacity):
        raise ValueError(f"capacity of {who} must be in (0, 1], got {capacity}")
    return capacity


@dataclass(frozen=True)
class Window:
    """The first ``core`` units of a group of ``size``, then a cyclic window of ``length − core``
    units starting at ``start`` in the ``reach − core`` units after the core (core 0: a plain cyclic
    window of ``length`` units). ``span``: the units the window cycles within (None: all ``size``)."""

    start: int
    length: int
    size: int
    core: int = 0
    span: int | None = None

    @property
    def reach(self) -> int:
        return self.size if self.span is None else self.span

    def indices(self) -> np.ndarray:
        core = np.arange(self.core, dtype=np.int64)
        if self.length == self.core:
            return core
        rest = self.core + (self.start + np.arange(self.length - self.core, dtype=np.int64)) % (self.reach - self.core)
        return np.concatenate([core, rest]) if self.core else rest

    def expected_inclusion(self) -> np.ndarray:
        """[size]: how often each unit is in this window as its start shifts round by round: 1 in
        the core, (length − core) / (reach − core) in the units after it up to ``reach``, 0 past it."""
        p = np.zeros(self.size)
        p[self.core : self.reach] = (self.length - self.core) / (self.reach - self.core) if self.reach > self.core else 0.0
        p[: self.core] = 1.0
        return p


@dataclass(frozen=True)
class ParticipantPlan:
    """One participant's units for every group: a Window, or a sorted index array (``fd``)."""

    node_id: int
    capacity: float
    groups: Mapping[str, Window | np.ndarray]

    def indices(self, group: str) -> np.ndarray:
        sel = self.groups[group]
        return sel.indices() if isinstance(sel, Window) else sel

    def unit_indices(self) -> dict[str, np.ndarray]:
        return {g: self.indices(g) for g in self.groups}

    def to_compact(self) -> dict[str, Any]:
        """JSON-able form: (start, length, K[, core[, span]]) per windowed group; an index list only for subsets."""
        windows = {
            g: [w.start, w.length, w.size] + ([w.core] if w.core or w.span is not None else []) + ([w.span] if w.span is not None else [])
            for g, w in self.groups.items()
            if isinstance(w, Window)
        }
        subsets = {g: [int(i) for i in s] for g, s in self.groups.items() if not isinstance(s, Window)}
        return {"node_id": self.node_id, "capacity": self.capacity, "windows": windows, "subsets": subsets}

    @classmethod
    def from_compact(cls, compact: Mapping[str, Any], group_sizes: Mapping[str, int]) -> ParticipantPlan:
        """Rebuild and verify a plan against the receiver's own (full-model) group sizes.

        A plan's K may be smaller than the receiver's (the ``small`` baseline's global model is
        itself built at width r); the received tensor shapes are checked against the plan after.
        Raises ValueError naming the group when a window or subset does not fit.
        """
        try:
            node_id, capacity = int(compact["node_id"]), check_capacity(compact["capacity"])
            windows, subsets = dict(compact.get("windows", {})), dict(compact.get("subsets", {}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed plan: {exc!r}") from exc
        named = set(windows) | set(subsets)
        if named != set(group_sizes) or set(windows) & set(subsets):
            raise ValueError(
                f"plan groups {sorted(named)} do not match the model's groups {sorted(group_sizes)}"
            )
        groups: dict[str, Window | np.ndarray] = {}
        for g, window in windows.items():
            if not isinstance(window, (list, tuple)) or len(window) not in (3, 4, 5):
                raise ValueError(f"plan window for group {g!r} must be [start, length, K[, core[, span]]], got {window!r}")
            start, length, size = window[:3]
            core = window[3] if len(window) > 3 else 0
            span = window[4] if len(window) > 4 else None
            reach = size if span is None else span
            k = group_sizes[g]
            if (
                not (1 <= size <= k)
                or not (0 <= core <= length <= reach <= size)
                or not (1 <= length)
                or not (0 <= start < max(reach - core, 1))
            ):
                raise ValueError(
                    f"plan window for group {g!r} is (start={start}, length={length}, K={size}, core={core}, span={span}); model K={k}"
                )
            groups[g] = Window(int(start), int(length), int(size), int(core), None if span is None else int(span))
        for g, idx in subsets.items():
            arr = np.asarray(idx, dtype=np.int64)
            k = group_sizes[g]
            if arr.ndim != 1 or arr.size == 0 or arr.min() < 0 or arr.max() >= k or np.unique(arr).size != arr.size:
                raise ValueError(f"plan subset for group {g!r} is not a set of distinct indices in [0, {k})")
            groups[g] = np.sort(arr)
        return cls(node_id, capacity, groups)


@dataclass(frozen=True)
class RoundPlan:
    server_round: int
    participants: Mapping[int, ParticipantPlan]
    overlap: float = 0.0  # the target overlap o_t this round was planned with
    spread: float = 0.0  # the inter-participant spread c_t it implied

    def coverage(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
        """How many participants train each unit of each group."""
        counts = {g: np.zeros(k, dtype=np.int64) for g, k in group_sizes.items()}
        for p in self.participants.values():
            for g, count in counts.items():
                np.add.at(count, p.indices(g), 1)
        return counts

    def coverage_histogram(self, group_sizes: Mapping[str, int]) -> dict[int, int]:
        """{c: number of units (over all groups) trained by exactly c participants}."""
        allc = np.concatenate(list(self.coverage(group_sizes).values()))
        values, counts = np.unique(allc, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


def _sorted_participants(participants: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    if len(participants) == 0:
        raise ValueError("cannot plan a round for an empty participant list")
    ids = [int(n) for n, _ in participants]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate participant ids in {ids}")
    return sorted((int(n), check_capacity(r, f"participant {n}")) for n, r in participants)


def plan_double_shift(
    server_round: int,
    participants: Sequence[tuple[int, float]],
    group_sizes: Mapping[str, int],
    spread: float,
    shift_step: int = 1,
    group_offsets: Mapping[str, int] | None = None,
) -> dict[int, ParticipantPlan]:
    """Cyclic windows shifted across participants (by spread·K/P per slot) and rounds (by shift_step),
    each group's windows moved by ``group_offsets[g]`` units (none: every group starts aligned)."""
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"spread must be in [0, 1], got {spread}")
    ordered = _sorted_participants(participants)
    num = len(ordered)
    plans = {}
    for slot, (node_id, capacity) in enumerate(ordered):
        groups = {
            g: Window(
                (math.floor(slot * spread * k / num) - server_round * shift_step + (group_offsets or {}).get(g, 0)) % k,
                window_length(capacity, k),
                k,
            )
            for g, k in group_sizes.items()
        }
        plans[node_id] = ParticipantPlan(node_id, capacity, groups)
    return plans


def core_length(overlap: float, window: int) -> int:
    """c = round(o·m): the shared core of a window of m units at overlap o."""
    return min(round(overlap * window), window)


def active_span(active_width: float, window: int, size: int) -> int | None:
    """S = max(m, round(a·K)): the units the remainder windows cycle within (None at a = 1: all K)."""
    return None if active_width >= 1.0 else min(max(window, round(active_width * size)), size)


def plan_core_and_remainder(
    server_round: int,
    participants: Sequence[tuple[int, float]],
    group_sizes: Mapping[str, int],
    overlap: float,
    shift_step: int = 1,
    group_offsets: Mapping[str, int] | None = None,
    active_width: float = 1.0,
) -> dict[int, ParticipantPlan]:
    """A shared core of round(o·m) units, the same prefix for everyone, plus a remainder window over
    the units after it (up to the active width), evenly spaced across participants and shifted by
    ``shift_step`` per round."""
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    check_capacity(active_width, "the active width")
    ordered = _sorted_participants(participants)
    num = len(ordered)
    plans = {}
    for slot, (node_id, capacity) in enumerate(ordered):
        groups = {}
        for g, k in group_sizes.items():
            m = window_length(capacity, k)
            core = core_length(overlap, m)
            span = active_span(active_width, m, k)
            rest = (span or k) - core
            start = (slot * rest // num - server_round * shift_step + (group_offsets or {}).get(g, 0)) % rest if m > core else 0
            groups[g] = Window(start, m, k, core, span)
        plans[node_id] = ParticipantPlan(node_id, capacity, groups)
    return plans


OVERLAP_FORMS = ("spread", "core")
WINDOW_OFFSETS = ("aligned", "per-group")


def per_group_offsets(seed: int, server_round: int, group_sizes: Mapping[str, int]) -> dict[str, int]:
    """An independent, uniformly drawn offset per (seed, round, group). With aligned windows, two
    groups of equal size keep the same relative offset forever, so a weight whose input and output
    units are further apart than a window is in no sub-model, ever (48 % of ResNet-18's conv
    weights at r = 1/4, P = 8). Independent offsets make every pair of units co-trained over rounds."""
    return {g: int(np.random.default_rng([seed, server_round, zlib.crc32(g.encode())]).integers(k)) for g, k in group_sizes.items()}


def plan_static_prefix(participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int]) -> dict[int, ParticipantPlan]:
    """HeteroFL: every participant trains the first m units of every group, every round."""
    return {
        n: ParticipantPlan(n, r, {g: Window(0, window_length(r, k), k) for g, k in group_sizes.items()})
        for n, r in _sorted_participants(participants)
    }


def plan_everything(participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int]) -> dict[int, ParticipantPlan]:
    """Every participant trains every unit of the global model, whatever its capacity."""
    return plan_static_prefix([(n, 1.0) for n, _ in _sorted_participants(participants)], group_sizes)


def plan_random_subsets(
    server_round: int, participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int], seed: int
) -> dict[int, ParticipantPlan]:
    """Federated dropout: m random units per group, drawn from a generator seeded by (seed, round, node)."""
    plans = {}
    for n, r in _sorted_participants(participants):
        rng = np.random.default_rng([seed, server_round, n])
        groups = {g: np.sort(rng.choice(k, window_length(r, k), replace=False)) for g, k in group_sizes.items()}
        plans[n] = ParticipantPlan(n, r, groups)
    return plans


@dataclass(frozen=True)
class GrowthEvent:
    """What a validation loss did to the core form's overlap. ``stepped``: o was lowered, and the
    server keeps θ as it is, to return to. ``kept``: the step passed its trial; the copy goes.
    ``undone``: the step did not pay, and o is back; the server returns θ to the copy where
    ``roll_back`` says so, and otherwise (``plateau-best``, as its runs were made, or a copy lost
    with a checkpoint from before copies were kept) silences the units outside ``core``."""

    kind: str  # "stepped" | "kept" | "undone"
    core: dict[str, int] | None = None  # undone: units per group of the core o is back to
    roll_back: bool = True


class Planner(Protocol):
    name: str

    def plan(
        self, server_round: int, participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int]
    ) -> RoundPlan: ...

    def observe(self, server_round: int, relative_shift: float) -> None:
        """Feed back d_t / floor, the relative model shift measured when aggregating ``server_round``."""

    def observe_validation(self, server_round: int, loss: float, group_sizes: Mapping[str, int]) -> GrowthEvent | None:
        """Feed back the global model's loss on the server's held-out split after ``server_round``.
        Returns what it did to the overlap, if anything: see ``GrowthEvent``."""

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        """The full model's units the global model keeps (``small``: a width-r prefix), or None: all."""

    def initial_core(self, group_sizes: Mapping[str, int]) -> dict[str, int] | None:
        """Units per group the global model starts with (the rest silenced), or None: all of them."""

    def inclusion(self, plan: RoundPlan) -> dict[str, np.ndarray] | None:
        """Per group [K], each unit's expected share of sub-models under ``plan``'s rule, by which the
        evaluated model scales the weights that read the unit; or None: evaluate θ as it is."""

    @property
    def needs_validation(self) -> bool:
        """Whether ``observe_validation`` drives the plan: a strategy must then have a validation function."""

    def set_trial_barriers(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        """Rounds a validation-driven rule must not judge a trial across (the last round at each lr,
        and the run's last), set when a run starts."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class DoubleShiftPlanner:
    """MSfusion: double shifting with an overlap schedule. By default the abstract's method: windows
    spread across participants and shifted every round, an independent offset per group, and the
    adaptive overlap rule; the evaluated model is the sub-models' expectation (``inclusion``).
    ``overlap_form = "core"`` with the ``grow`` schedule is the starts-as-small variant."""

    schedule: OverlapSchedule = field(default_factory=OverlapSchedule)
    shift_step: int = 1
    name: str = "msfusion"
    window_offsets: str = "per-group"  # or "aligned": see per_group_offsets
    seed: int = 0
    overlap_form: str = "spread"  # or "core": see plan_core_and_remainder
    core_capacity: float = 0.5  # the core form starts as the model of this width (the smallest tier)
    inclusion_scaling: bool = True  # evaluate with readers scaled by expected inclusion (see inclusion)
    active_width: float = 1.0  # core form: the remainder windows cycle within this share of each group
    # The method's local loss: every participant trains with MOON's contrastive term at this weight
    # (sent with each plan). 0 saves its frozen forward passes.
    contrastive_mu: float = 1.0

    def __post_init__(self) -> None:
        check_capacity(self.core_capacity, "the core form's starting width")
        check_capacity(self.active_width, "the active width")
        if self.active_width < 1.0 and self.overlap_form != "core":
            raise ValueError(f"active-width {self.active_width} < 1 needs overlap-form 'core' (the spread form windows the whole group)")
        if self.window_offsets not in WINDOW_OFFSETS:
            raise ValueError(f"window offsets must be one of {', '.join(WINDOW_OFFSETS)}; got {self.window_offsets!r}")
        if self.overlap_form not in OVERLAP_FORMS:
            raise ValueError(f"overlap form must be one of {', '.join(OVERLAP_FORMS)}; got {self.overlap_form!r}")
        if self.schedule.kind in VALIDATION_DRIVEN and self.overlap_form != "core":
            raise ValueError(f"overlap schedule {self.schedule.kind!r} grows the core form from the small model: it needs overlap form 'core', got {self.overlap_form!r}")

    def spread_for(self, overlap: float, participants: Sequence[tuple[int, float]]) -> float:
        """c = min(1, P·r̄·(1 − o)): the spread whose neighbouring windows overlap by a fraction o (mean r)."""
        mean_r = float(np.mean([r for _, r in participants]))
        return min(1.0, max(0.0, len(participants) * mean_r * (1.0 - overlap)))

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        overlap = self.schedule.overlap(server_round)
        offsets = per_group_offsets(self.seed, server_round, group_sizes) if self.window_offsets == "per-group" else None
        if self.overlap_form == "core":
            plans = plan_core_and_remainder(server_round, participants, group_sizes, overlap, self.shift_step, offsets, self.active_width)
            return RoundPlan(server_round, plans, overlap, 1.0)
        spread = self.spread_for(overlap, _sorted_participants(participants))
        plans = plan_double_shift(server_round, participants, group_sizes, spread, self.shift_step, offsets)
        return RoundPlan(server_round, plans, overlap, spread)

    def observe(self, server_round: int, relative_shift: float) -> None:
        self.schedule.update(relative_shift)

    def observe_validation(self, server_round: int, loss: float, group_sizes: Mapping[str, int]) -> GrowthEvent | None:
        """A growth step taken or undone by the plateau rule (core form only: under ``spread`` the
        overlap moves no unit out of every window)."""
        event = self.schedule.observe_validation(server_round, loss)
        if event is None or self.overlap_form != "core":
            return None
        if event == "undone":
            core = self.core_units(group_sizes, self.schedule.overlap(server_round + 1))
            return GrowthEvent(event, core, roll_back=self.schedule.kind != "plateau-best")
        return GrowthEvent(event)

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        return None

    def initial_core(self, group_sizes: Mapping[str, int]) -> dict[str, int] | None:
        """Under the core form the global model starts as the width-r model: units past the core
        the first round would have (o_1 · m) are silenced until remainder windows reach them. Below
        an active width, the first round's remainders reach the span at once (o_1 < 1), and only
        units past it are silenced."""
        if self.overlap_form != "core":
            return None
        core = self.core_units(group_sizes, self.schedule.overlap(1))
        if self.active_width >= 1.0:
            return core
        windows = {g: window_length(self.core_capacity, k) for g, k in group_sizes.items()}
        return {g: c if c == windows[g] else active_span(self.active_width, windows[g], group_sizes[g]) for g, c in core.items()}

    def inclusion(self, plan: RoundPlan) -> dict[str, np.ndarray] | None:
        """Dropout's weight-scaling rule. Each unit is in only some of the sub-models, which are
        trained without it the rest of the time; the full model sums every unit at full weight and
        so overshoots what any sub-model learned to expect (C1v1: every growth step of the core form
        collapsed accuracy by 12-20 points; the spread form rose, then fell, round after round).
        Scaling each unit's readers by its expected share of sub-models (over the shifts of every
        participant's window: m/K for a spread window, 1 in a core and (m − c)/(K − c) after it)
        makes the evaluated model the sub-models' expectation. At o = 1 under the core form it is
        exactly the silencing of the units outside the core."""
        if not self.inclusion_scaling or not plan.participants:
            return None
        windows = [pp.groups for pp in plan.participants.values()]
        return {g: np.mean([w[g].expected_inclusion() for w in windows], axis=0) for g in windows[0]}

    @property
    def needs_validation(self) -> bool:
        """Whether the schedule is driven by the server's validation loss (``grow``)."""
        return self.schedule.kind in VALIDATION_DRIVEN

    def set_trial_barriers(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        self.schedule.set_trial_barriers(last_round, lr_changes)

    def core_units(self, group_sizes: Mapping[str, int], overlap: float) -> dict[str, int]:
        """The shared core at ``overlap``, in units per group, for the smallest capacity."""
        return {g: core_length(overlap, window_length(self.core_capacity, k)) for g, k in group_sizes.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shift_step": self.shift_step,
            "window_offsets": self.window_offsets,
            "overlap_form": self.overlap_form,
            "schedule": self.schedule.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])


@dataclass
class FixedRulePlanner:
    """The baselines: ``fedrolex`` (spread 0), ``heterofl`` (static prefix), ``fd`` (random subsets),
    ``full`` (everyone trains every unit)."""

    name: str
    seed: int = 0
    shift_step: int = 1
    contrastive_mu = 0.0  # the baselines train as published, without MSfusion's contrastive term

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        if self.name == "fedrolex":
            plans = plan_double_shift(server_round, participants, group_sizes, 0.0, self.shift_step)
            return RoundPlan(server_round, plans, 1.0, 0.0)
        if self.name == "heterofl":
            return RoundPlan(server_round, plan_static_prefix(participants, group_sizes), 1.0, 0.0)
        if self.name == "fd":
            return RoundPlan(server_round, plan_random_subsets(server_round, participants, group_sizes, self.seed))
        if self.name == "full":
            return RoundPlan(server_round, plan_everything(participants, group_sizes), 1.0, 0.0)
        raise ValueError(f"unknown planner {self.name!r}; known: {', '.join(PLANNER_NAMES)}")

    def observe(self, server_round: int, relative_shift: float) -> None:
        pass

    def observe_validation(self, server_round: int, loss: float, group_sizes: Mapping[str, int]) -> GrowthEvent | None:
        return None

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        return None

    def initial_core(self, group_sizes: Mapping[str, int]) -> dict[str, int] | None:
        return None

    def inclusion(self, plan: RoundPlan) -> dict[str, np.ndarray] | None:
        return None

    needs_validation = False

    def set_trial_barriers(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "shift_step": self.shift_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass
class SmallModelPlanner(FixedRulePlanner):
    """``small`` ("exclusive learning"): the global model itself is the width-r model, and every
    participant trains all of it. This planner owns that width: the server builds θ from
    ``global_units``, and plans are over the small model's own groups."""

    name: str = "small"
    capacity: float = 0.5

    def __post_init__(self) -> None:
        check_capacity(self.capacity, "the small model")

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        return RoundPlan(server_round, plan_everything(participants, group_sizes), 1.0, 0.0)

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
        return {g: Window(0, window_length(self.capacity, k), k).indices() for g, k in group_sizes.items()}


def make_planner(
    name: str,
    *,
    schedule: OverlapSchedule | None = None,
    shift_step: int = 1,
    seed: int = 0,
    window_offsets: str = "per-group",
    overlap_form: str = "spread",
    small_capacity: float = 0.5,
    inclusion_scaling: bool = True,
    active_width: float = 1.0,
    contrastive_mu: float = 1.0,
) -> Planner:
    """Build a planner by name (run config ``planner``). ``window_offsets``, ``overlap_form``,
    ``inclusion_scaling``, ``active_width`` and ``contrastive_mu`` are msfusion's only; ``small_capacity`` (the smallest
    capacity tier) is the width of ``small``'s global model and the width msfusion's core form starts from."""
    if name == "msfusion":
        return DoubleShiftPlanner(
            schedule or OverlapSchedule(), shift_step, window_offsets=window_offsets, seed=seed,
            overlap_form=overlap_form, core_capacity=small_capacity, inclusion_scaling=inclusion_scaling,
            active_width=active_width, contrastive_mu=contrastive_mu,
        )
    if name == "small":
        return SmallModelPlanner(seed=seed, shift_step=shift_step, capacity=small_capacity)
    if name in PLANNER_NAMES:
        return FixedRulePlanner(name, seed, shift_step)
    raise ValueError(f"unknown planner {name!r}; known: {', '.join(PLANNER_NAMES)}")
