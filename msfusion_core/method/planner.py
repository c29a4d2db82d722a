"""Planners: which units of every width group each participant trains in a round (SPEC §2).

Pure numpy, no torch, no Flower. A plan is deterministic from (seed, round, participant list,
overlap state), so a receiver can rebuild it from its compact form and verify it.

Each planner is a class, chosen by name through ``PLANNERS``; msfusion's layout is chosen by its
schedule's ``form`` through ``FORMS``. Under the ``spread`` form (``SpreadPlanner``, the abstract's)
windows are cyclic and contiguous: participant slot p (position in
the id-sorted participant list) of P gets, for a group of K units and capacity r,

    m = clamp(round(r·K), 1, K)
    s = (floor(p·c·K / P) − t·δ) mod K
    I = {(s + j) mod K : j < m}

The inter-participant spread c ∈ [0, 1] sets the overlap (c = 0: everyone shares one window, which
is FedRolex's rule; c = 1: windows evenly spaced). The inter-round shift rolls windows toward lower
indices by δ units per round: the direction of FedRolex's ``torch.roll(arange(K), t)[:m]``, which
the issue fixes (SPEC §2 writes ``+t·δ``; only the direction differs).

Under the ``core`` form (``CorePlanner``, the ``grow`` schedule's) the overlap is a shared core instead: every participant trains the
first c = round(o·m) units of the group, and a double-shifted remainder of m − c units, a cyclic
window over the K − c units after the core, evenly spaced across participants (spread 1):

    I = {0, …, c − 1} ∪ {c + (s + j) mod (K − c) : j < m − c}

o = 1 is the width-r ``small`` model embedded in the full one (with the non-core units silenced at
initialisation: msfusion_core.method.growth); o = 0 is pure double shifting.

A depth group (a stack of ``Blocks``) is planned by the same rules, its units being blocks; how a
participant's capacity is spent between blocks and width is ``depth_share`` (``axis_capacity``).
"""

from __future__ import annotations

import math
import zlib
from functools import partial
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from msfusion_core.method.contrastive import CONTRASTIVE_MU, check_mu
from msfusion_core.method.overlap import AdaptiveOverlap, Schedule
from msfusion_core.method.split_map import depth_groups


def window_length(capacity: float, size: int) -> int:
    """m = clamp(round(r·K), 1, K)."""
    return min(max(round(capacity * size), 1), size)


def axis_capacity(capacity: float, depth: bool, depth_share: float) -> float:
    """A participant's capacity r spent on one axis: r^a on depth groups (the share of blocks it
    holds), r^(1−a) on width groups, so that holding both costs about r. a = 0: width windows only
    (every block held); a = 1: depth windows only (every block at full width)."""
    return capacity ** (depth_share if depth else 1.0 - depth_share)


def window_lengths(capacity: float, group_sizes: Mapping[str, int], depth_share: float = 0.0) -> dict[str, int]:
    """m per group for a participant of ``capacity``."""
    depth = depth_groups(group_sizes)
    return {g: window_length(axis_capacity(capacity, g in depth, depth_share), k) for g, k in group_sizes.items()}


def check_capacity(capacity: float, who: object = "participant") -> float:
    capacity = float(capacity)
    if not (0.0 < capacity <= 1.0) or math.isnan(capacity):
        raise ValueError(f"capacity of {who} must be in (0, 1], got {capacity}")
    return capacity


@dataclass(frozen=True)
class Window:
    """The first ``core`` units of a group of ``size``, then a cyclic window of ``length − core``
    units starting at ``start`` in the ``size − core`` units after the core (core 0: a plain cyclic
    window of ``length`` units)."""

    start: int
    length: int
    size: int
    core: int = 0

    def indices(self) -> np.ndarray:
        core = np.arange(self.core, dtype=np.int64)
        if self.length == self.core:
            return core
        rest = self.core + (self.start + np.arange(self.length - self.core, dtype=np.int64)) % (self.size - self.core)
        return np.concatenate([core, rest]) if self.core else rest

    def expected_inclusion(self) -> np.ndarray:
        """[size]: how often each unit is in this window as its start shifts round by round: 1 in
        the core, (length − core) / (size − core) in the units after it."""
        p = np.zeros(self.size)
        p[self.core :] = (self.length - self.core) / (self.size - self.core) if self.size > self.core else 0.0
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
        """JSON-able form: (start, length, K[, core]) per windowed group; an index list only for subsets."""
        windows = {
            g: [w.start, w.length, w.size] + ([w.core] if w.core else [])
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
            if not isinstance(window, (list, tuple)) or len(window) not in (3, 4):
                raise ValueError(f"plan window for group {g!r} must be [start, length, K[, core]], got {window!r}")
            start, length, size = window[:3]
            core = window[3] if len(window) > 3 else 0
            k = group_sizes[g]
            if not (1 <= size <= k) or not (0 <= core <= length <= size) or not (1 <= length) or not (0 <= start < max(size - core, 1)):
                raise ValueError(f"plan window for group {g!r} is (start={start}, length={length}, K={size}, core={core}); model K={k}")
            groups[g] = Window(int(start), int(length), int(size), int(core))
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
    spread: float | Mapping[str, float],
    shift_step: int = 1,
    group_offsets: Mapping[str, int] | None = None,
    depth_share: float = 0.0,
) -> dict[int, ParticipantPlan]:
    """Cyclic windows shifted across participants (by spread·K/P per slot; one spread, or one per
    group) and rounds (by shift_step), each group's windows moved by ``group_offsets[g]`` units
    (none: every group starts aligned). ``depth_share``: see ``axis_capacity``."""
    spreads = spread if isinstance(spread, Mapping) else dict.fromkeys(group_sizes, spread)
    if not all(0.0 <= c <= 1.0 for c in spreads.values()):
        raise ValueError(f"spread must be in [0, 1], got {spread}")
    ordered = _sorted_participants(participants)
    num = len(ordered)
    plans = {}
    for slot, (node_id, capacity) in enumerate(ordered):
        lengths = window_lengths(capacity, group_sizes, depth_share)
        groups = {
            g: Window((math.floor(slot * spreads[g] * k / num) - server_round * shift_step + (group_offsets or {}).get(g, 0)) % k, lengths[g], k)
            for g, k in group_sizes.items()
        }
        plans[node_id] = ParticipantPlan(node_id, capacity, groups)
    return plans


def core_length(overlap: float, window: int) -> int:
    """c = round(o·m): the shared core of a window of m units at overlap o."""
    return min(round(overlap * window), window)


def plan_core_and_remainder(
    server_round: int,
    participants: Sequence[tuple[int, float]],
    group_sizes: Mapping[str, int],
    overlap: float,
    shift_step: int = 1,
    group_offsets: Mapping[str, int] | None = None,
    depth_share: float = 0.0,
) -> dict[int, ParticipantPlan]:
    """A shared core of round(o·m) units, the same prefix for everyone, plus a remainder window over
    the units after it, evenly spaced across participants and shifted by ``shift_step`` per round."""
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    ordered = _sorted_participants(participants)
    num = len(ordered)
    plans = {}
    for slot, (node_id, capacity) in enumerate(ordered):
        groups = {}
        lengths = window_lengths(capacity, group_sizes, depth_share)
        for g, k in group_sizes.items():
            m = lengths[g]
            core = core_length(overlap, m)
            rest = k - core
            start = (slot * rest // num - server_round * shift_step + (group_offsets or {}).get(g, 0)) % rest if m > core else 0
            groups[g] = Window(start, m, k, core)
        plans[node_id] = ParticipantPlan(node_id, capacity, groups)
    return plans


def per_group_offsets(seed: int, server_round: int, group_sizes: Mapping[str, int]) -> dict[str, int]:
    """An independent, uniformly drawn offset per (seed, round, group). With aligned windows, two
    groups of equal size keep the same relative offset forever, so a weight whose input and output
    units are further apart than a window is in no sub-model, ever (48 % of ResNet-18's conv
    weights at r = 1/4, P = 8). Independent offsets make every pair of units co-trained over rounds."""
    return {g: int(np.random.default_rng([seed, server_round, zlib.crc32(g.encode())]).integers(k)) for g, k in group_sizes.items()}


def plan_static_prefix(
    participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int], depth_share: float = 0.0
) -> dict[int, ParticipantPlan]:
    """HeteroFL: every participant trains the first m units of every group, every round (of every
    width group, all blocks, unless ``depth_share`` spends capacity on blocks)."""
    return {
        n: ParticipantPlan(n, r, {g: Window(0, m, group_sizes[g]) for g, m in window_lengths(r, group_sizes, depth_share).items()})
        for n, r in _sorted_participants(participants)
    }


def plan_everything(participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int]) -> dict[int, ParticipantPlan]:
    """Every participant trains every unit of the global model, whatever its capacity."""
    return plan_static_prefix([(n, 1.0) for n, _ in _sorted_participants(participants)], group_sizes)


def plan_random_subsets(
    server_round: int, participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int], seed: int
) -> dict[int, ParticipantPlan]:
    """Federated dropout: m random units per width group, drawn from a generator seeded by (seed, round, node)."""
    plans = {}
    for n, r in _sorted_participants(participants):
        rng = np.random.default_rng([seed, server_round, n])
        groups = {g: np.sort(rng.choice(group_sizes[g], m, replace=False)) for g, m in window_lengths(r, group_sizes).items()}
        plans[n] = ParticipantPlan(n, r, groups)
    return plans


@dataclass(frozen=True)
class GrowthEvent:
    """What a validation loss did to the core form's overlap. ``stepped``: o was lowered, and the
    server keeps θ as it is, to return to. ``kept``: the step passed its trial; the copy goes.
    ``undone``: the step did not pay, and o is back; the server returns θ to the copy (or, with a
    copy lost with a checkpoint from before copies were kept, silences the units outside ``core``)."""

    kind: str  # "stepped" | "kept" | "undone"
    core: dict[str, int] | None = None  # undone: units per group of the core o is back to


class Planner(Protocol):
    name: str
    depth_share: float  # how a capacity is spent on blocks against width (``axis_capacity``)

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

    def set_run_length(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        """The run's last round and the last round at each lr, set whenever a run starts: what a
        schedule derives from them (grow's patience and trial barriers) is never checkpointed."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class DoubleShiftPlanner:
    """MSfusion: double shifting under an overlap schedule. Windows shift across participants and
    across rounds, each group by an independent offset (``per_group_offsets``), and the evaluated
    model is the sub-models' expectation (``inclusion``). The schedule's ``form`` picks the
    subclass that lays the windows out (``FORMS``)."""

    def __init__(
        self,
        schedule: Schedule | None = None,
        *,
        seed: int = 0,
        core_capacity: float = 0.5,
        inclusion_scaling: bool = True,
        contrastive_mu: float = CONTRASTIVE_MU,
        depth_share: float = 0.0,
    ) -> None:
        """``core_capacity``: the smallest capacity tier (the core form starts as the model of
        this width). ``contrastive_mu``: the method's local loss, MOON's contrastive term at this
        weight in every participant's training (sent with each plan); 0 saves its frozen forwards.
        ``depth_share``: how a participant's capacity is spent on the model's block stacks (its
        ``Blocks``) against width (``axis_capacity``): 0, width windows only; 1, windows of whole
        blocks only (``msfusion-depth``); between, a window of blocks each at reduced width."""
        if not 0.0 <= depth_share <= 1.0:
            raise ValueError(f"depth_share must be in [0, 1], got {depth_share}")
        self.name = next((n for n, a in MSFUSION_FORMS.items() if a == depth_share), f"msfusion-depth{depth_share:g}")
        self.depth_share = depth_share
        self.schedule = schedule if schedule is not None else AdaptiveOverlap()
        self.seed = seed
        self.core_capacity = check_capacity(core_capacity, "the core form's starting width")
        self.inclusion_scaling = inclusion_scaling
        self.contrastive_mu = check_mu(contrastive_mu, "contrastive_mu")

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        overlap = self.schedule.overlap(server_round)
        return self.windows(server_round, participants, group_sizes, overlap, per_group_offsets(self.seed, server_round, group_sizes))

    def windows(self, server_round, participants, group_sizes, overlap: float, offsets: Mapping[str, int]) -> RoundPlan:
        raise NotImplementedError

    def observe(self, server_round: int, relative_shift: float) -> None:
        self.schedule.observe_shift(relative_shift)

    def observe_validation(self, server_round: int, loss: float, group_sizes: Mapping[str, int]) -> GrowthEvent | None:
        self.schedule.observe_validation(server_round, loss)
        return None

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        return None

    def initial_core(self, group_sizes: Mapping[str, int]) -> dict[str, int] | None:
        return None

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
        return self.schedule.needs_validation

    def set_run_length(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        self.schedule.set_run_length(last_round, lr_changes)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])


class SpreadPlanner(DoubleShiftPlanner):
    """The abstract's form: the overlap sets how far apart neighbouring windows start."""

    @staticmethod
    def spread_for(overlap: float, capacities: Sequence[float]) -> float:
        """c = min(1, P·r̄·(1 − o)): the spread whose neighbouring windows overlap by a fraction o
        (r̄: the participants' mean capacity on the group's axis)."""
        return min(1.0, max(0.0, len(capacities) * float(np.mean(capacities)) * (1.0 - overlap)))

    def windows(self, server_round, participants, group_sizes, overlap, offsets) -> RoundPlan:
        ordered, depth = _sorted_participants(participants), depth_groups(group_sizes)
        by_axis = {
            axis: self.spread_for(overlap, [axis_capacity(r, axis, self.depth_share) for _, r in ordered]) for axis in (False, True)
        }
        spreads = {g: by_axis[g in depth] for g in group_sizes}
        plans = plan_double_shift(server_round, participants, group_sizes, spreads, 1, offsets, self.depth_share)
        return RoundPlan(server_round, plans, overlap, by_axis[self.depth_share >= 0.5])


class CorePlanner(DoubleShiftPlanner):
    """A shared core of round(o·m) units plus a double-shifted remainder: o = 1 is the width-r
    model embedded in the full one. With ``grow`` it starts as that model and grows on plateaus."""

    def windows(self, server_round, participants, group_sizes, overlap, offsets) -> RoundPlan:
        plans = plan_core_and_remainder(server_round, participants, group_sizes, overlap, 1, offsets, self.depth_share)
        return RoundPlan(server_round, plans, overlap, 1.0)

    def observe_validation(self, server_round: int, loss: float, group_sizes: Mapping[str, int]) -> GrowthEvent | None:
        """A growth step taken, kept or undone by the schedule; an undone one names the core o is back to."""
        event = self.schedule.observe_validation(server_round, loss)
        if event is None:
            return None
        return GrowthEvent(event, self.core_units(group_sizes, self.schedule.overlap(server_round + 1)) if event == "undone" else None)

    def initial_core(self, group_sizes: Mapping[str, int]) -> dict[str, int] | None:
        """The global model starts as the width-r model: units past the core the first round
        would have (o_1 · m) are silenced until remainder windows reach them."""
        return self.core_units(group_sizes, self.schedule.overlap(1))

    def core_units(self, group_sizes: Mapping[str, int], overlap: float) -> dict[str, int]:
        """The shared core at ``overlap``, in units per group, for the smallest capacity."""
        return {g: core_length(overlap, m) for g, m in window_lengths(self.core_capacity, group_sizes, self.depth_share).items()}


FORMS: dict[str, type[DoubleShiftPlanner]] = {"spread": SpreadPlanner, "core": CorePlanner}


def msfusion_planner(schedule: Schedule | None = None, **options: Any) -> DoubleShiftPlanner:
    """MSfusion under ``schedule`` (default: adaptive from o = 0.5), laid out as its form says."""
    schedule = schedule if schedule is not None else AdaptiveOverlap()
    return FORMS[schedule.form](schedule, **options)


class BaselinePlanner:
    """A published baseline: a fixed rule for the windows, θ evaluated as it is, no contrastive term."""

    name = "baseline"
    depth_share = 0.0  # width windows; every block held
    contrastive_mu = 0.0  # the baselines train as published, without MSfusion's contrastive term
    needs_validation = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        raise NotImplementedError

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

    def set_run_length(self, last_round: int, lr_changes: tuple[int, ...] = ()) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class FedRolexPlanner(BaselinePlanner):
    """FedRolex: every participant's window starts at the same rolling offset (spread 0)."""

    name = "fedrolex"

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        return RoundPlan(server_round, plan_double_shift(server_round, participants, group_sizes, 0.0), 1.0, 0.0)


class HeteroFLPlanner(BaselinePlanner):
    """HeteroFL: the first m units of every group, every round."""

    name = "heterofl"

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        return RoundPlan(server_round, plan_static_prefix(participants, group_sizes), 1.0, 0.0)


class FederatedDropoutPlanner(BaselinePlanner):
    """Federated dropout: m random units per group, per participant and round."""

    name = "fd"

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        return RoundPlan(server_round, plan_random_subsets(server_round, participants, group_sizes, self.seed))


class FullPlanner(BaselinePlanner):
    """FedAvg of the full model: everyone trains every unit, whatever its capacity."""

    name = "full"

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        return RoundPlan(server_round, plan_everything(participants, group_sizes), 1.0, 0.0)


class SmallModelPlanner(FullPlanner):
    """``small`` ("exclusive learning"): the global model itself is the width-r model, and every
    participant trains all of it. This planner owns that width: the server builds θ from
    ``global_units``, and plans are over the small model's own groups. (``shallow``, with
    ``depth_share`` 1, is the model with fewer blocks instead.)"""

    name = "small"

    def __init__(self, seed: int = 0, capacity: float = 0.5) -> None:
        super().__init__(seed)
        self.capacity = check_capacity(capacity, "the small model")

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
        return {g: np.arange(m) for g, m in window_lengths(self.capacity, group_sizes, self.depth_share).items()}


class ShallowPlanner(SmallModelPlanner):
    """``shallow``, the small control of depth windows: the global model itself has only the first
    round(r·L) blocks of every block stack, at full width, and every participant trains all of it."""

    name = "shallow"
    depth_share = 1.0


# MSfusion's named forms by ``depth_share``: width windows, r^(1/2) of the blocks each at width
# r^(1/2), and windows of whole blocks.
MSFUSION_FORMS: dict[str, float] = {"msfusion": 0.0, "msfusion-combined": 0.5, "msfusion-depth": 1.0}
PLANNERS: dict[str, Any] = {
    **{name: partial(msfusion_planner, depth_share=share) for name, share in MSFUSION_FORMS.items()},
    "fedrolex": FedRolexPlanner,
    "heterofl": HeteroFLPlanner,
    "fd": FederatedDropoutPlanner,
    "full": FullPlanner,
    "small": SmallModelPlanner,
    "shallow": ShallowPlanner,
}
PLANNER_NAMES: tuple[str, ...] = tuple(PLANNERS)


def make_planner(
    name: str,
    *,
    schedule: Schedule | None = None,
    seed: int = 0,
    small_capacity: float = 0.5,
    inclusion_scaling: bool = True,
    contrastive_mu: float = CONTRASTIVE_MU,
) -> Planner:
    """A planner by name (run config ``planner``). ``schedule``, ``inclusion_scaling`` and
    ``contrastive_mu`` are msfusion's; ``small_capacity`` (the smallest capacity tier) is the width
    of ``small``'s global model and the width msfusion's core form starts from."""
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; known: {', '.join(PLANNERS)}")
    msfusion = {"schedule": schedule, "core_capacity": small_capacity, "inclusion_scaling": inclusion_scaling, "contrastive_mu": contrastive_mu}
    small = {"capacity": small_capacity}
    options = dict.fromkeys(MSFUSION_FORMS, msfusion) | {"small": small, "shallow": small}
    return PLANNERS[name](seed=seed, **options.get(name, {}))
