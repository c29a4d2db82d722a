"""Planners: MSfusion and the baselines, each a small object that plans a round's windows
(``msfusion_core.method.windows``), observes the round's result and says how the evaluated model
scales each unit. ``PLANNERS`` is the one registry of them, by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from msfusion_core.method.overlap import Schedule, make_schedule
from msfusion_core.method.split_map import depth_groups
from msfusion_core.method.windows import (
    ParticipantPlan,
    RoundPlan,
    Window,
    sorted_participants,
    axis_capacity,
    check_capacity,
    per_group_offsets,
    plan_double_shift,
    plan_everything,
    plan_random_subsets,
    plan_static_prefix,
    window_lengths,
)

__all__ = ["PLANNERS", "PLANNER_NAMES", "ParticipantPlan", "Planner", "PlannerOptions", "RoundPlan", "Window", "check_capacity", "make_planner"]


class Planner(Protocol):
    name: str  # its key in ``PLANNERS``
    depth_share: float  # how a capacity is spent on blocks against width (``axis_capacity``)
    uses_contrastive: bool  # whether participants train with MSfusion's contrastive term

    def plan(self, server_round: int, participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int]) -> RoundPlan: ...

    def observe(self, server_round: int, relative_shift: float) -> None:
        """Feed back d_t / floor, the relative model shift measured when aggregating ``server_round``."""

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        """The full model's units the global model keeps (``small``: a width-r prefix), or None: all."""

    def inclusion(self, plan: RoundPlan) -> dict[str, np.ndarray] | None:
        """Per group [K], each unit's expected share of sub-models under ``plan``, by which the
        evaluated model scales the weights that read the unit; or None: evaluate θ as it is."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class MSfusionPlanner:
    """MSfusion: double shifting under an overlap schedule. Windows shift across participants (the
    overlap sets how far apart neighbouring windows start) and across rounds, each group by an
    independent offset (``per_group_offsets``); the evaluated model is the sub-models' expectation.

    ``depth_share``: how a participant's capacity is spent on the model's block stacks against
    width (``axis_capacity``): 0, width windows only; 1, windows of whole blocks only; between, a
    window of blocks each at reduced width."""

    uses_contrastive = True

    def __init__(
        self, schedule: Schedule | None = None, *, seed: int = 0, inclusion_scaling: bool = True, depth_share: float = 0.0, name: str = "msfusion"
    ) -> None:
        if not 0.0 <= depth_share <= 1.0:
            raise ValueError(f"depth_share must be in [0, 1], got {depth_share}")
        self.name, self.depth_share = name, depth_share
        self.schedule = schedule if schedule is not None else make_schedule("adaptive")
        self.seed = seed
        self.inclusion_scaling = inclusion_scaling

    @staticmethod
    def spread_for(overlap: float, capacities: Sequence[float]) -> float:
        """c = min(1, P·r̄·(1 − o)): the spread whose neighbouring windows overlap by a fraction o
        (r̄: the participants' mean capacity on the group's axis)."""
        return min(1.0, max(0.0, len(capacities) * float(np.mean(capacities)) * (1.0 - overlap)))

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        overlap = self.schedule.overlap(server_round)
        ordered, depth = sorted_participants(participants), depth_groups(group_sizes)
        by_axis = {axis: self.spread_for(overlap, [axis_capacity(r, axis, self.depth_share) for _, r in ordered]) for axis in (False, True)}
        spreads = {g: by_axis[g in depth] for g in group_sizes}
        offsets = per_group_offsets(self.seed, server_round, group_sizes)
        plans = plan_double_shift(server_round, participants, group_sizes, spreads, 1, offsets, self.depth_share)
        return RoundPlan(server_round, plans, overlap, by_axis[self.depth_share >= 0.5])

    def observe(self, server_round: int, relative_shift: float) -> None:
        self.schedule.observe_shift(relative_shift)

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        return None

    def inclusion(self, plan: RoundPlan) -> dict[str, np.ndarray] | None:
        """Dropout's weight-scaling rule. Each unit is in only some of the sub-models, which are
        trained without it the rest of the time; the full model sums every unit at full weight and
        so overshoots what any sub-model learned to expect. Scaling each unit's readers by its
        expected share of sub-models (m/K over the shifts of every participant's window) makes the
        evaluated model the sub-models' expectation."""
        if not self.inclusion_scaling or not plan.participants:
            return None
        windows = [pp.groups for pp in plan.participants.values()]
        return {g: np.mean([w[g].expected_inclusion() for w in windows], axis=0) for g in windows[0]}

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])


class BaselinePlanner:
    """A published baseline: a fixed rule for the windows, θ evaluated as it is, no contrastive term."""

    name = "baseline"
    depth_share = 0.0  # width windows; every block held
    uses_contrastive = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def plan(self, server_round, participants, group_sizes) -> RoundPlan:
        raise NotImplementedError

    def observe(self, server_round: int, relative_shift: float) -> None:
        pass

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        return None

    def inclusion(self, plan: RoundPlan) -> dict[str, np.ndarray] | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name}

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
    participant trains all of it. The server builds θ from ``global_units``, and plans are over the
    small model's own groups. (``shallow``, with ``depth_share`` 1, has fewer blocks instead.)"""

    name = "small"

    def __init__(self, seed: int = 0, capacity: float = 0.5) -> None:
        super().__init__(seed)
        self.capacity = check_capacity(capacity, "the small model")

    def global_units(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
        return {g: np.arange(m) for g, m in window_lengths(self.capacity, group_sizes, self.depth_share).items()}


class ShallowPlanner(SmallModelPlanner):
    """``shallow``, the small control of depth windows: the global model has only the first
    round(r·L) blocks of every block stack, at full width, and every participant trains all of it."""

    name = "shallow"
    depth_share = 1.0


@dataclass(frozen=True)
class PlannerOptions:
    """What a planner may be built with. ``small_capacity`` (the smallest capacity tier) is the width
    of ``small``'s and ``shallow``'s global model; the overlap and inclusion settings are MSfusion's."""

    seed: int = 0
    small_capacity: float = 0.5
    overlap_schedule: str = "adaptive"
    overlap_start: float = 0.5
    inclusion_scaling: bool = True


def _msfusion(name: str, depth_share: float) -> Callable[[PlannerOptions], Planner]:
    def make(o: PlannerOptions) -> Planner:
        schedule = make_schedule(o.overlap_schedule, o.overlap_start)
        return MSfusionPlanner(schedule, seed=o.seed, inclusion_scaling=o.inclusion_scaling, depth_share=depth_share, name=name)

    return make


# Every planner by name. MSfusion's forms differ in ``depth_share``: width windows, r^(1/2) of the
# blocks each at width r^(1/2), and windows of whole blocks.
PLANNERS: dict[str, Callable[[PlannerOptions], Planner]] = {
    "msfusion": _msfusion("msfusion", 0.0),
    "msfusion-combined": _msfusion("msfusion-combined", 0.5),
    "msfusion-depth": _msfusion("msfusion-depth", 1.0),
    "fedrolex": lambda o: FedRolexPlanner(o.seed),
    "heterofl": lambda o: HeteroFLPlanner(o.seed),
    "fd": lambda o: FederatedDropoutPlanner(o.seed),
    "full": lambda o: FullPlanner(o.seed),
    "small": lambda o: SmallModelPlanner(o.seed, o.small_capacity),
    "shallow": lambda o: ShallowPlanner(o.seed, o.small_capacity),
}
PLANNER_NAMES: tuple[str, ...] = tuple(PLANNERS)


def make_planner(name: str, options: PlannerOptions | None = None, **fields: Any) -> Planner:
    """A planner by name (run config ``planner``), from ``options`` or ``PlannerOptions(**fields)``."""
    if name not in PLANNERS:
        raise ValueError(f"planner must be one of {', '.join(PLANNERS)}; got {name!r}")
    return PLANNERS[name](options if options is not None else PlannerOptions(**fields))
