"""MSfusion, framework-free: split maps, planners, sub-models, aggregation and local training.

Nothing here imports Flower; ``server_app`` and ``client_app`` adapt these objects to Flower's
message API.
"""

from msfusion_core.method.aggregate import AggregateResult, Contribution, scatter_average
from msfusion_core.method.overlap import OverlapSchedule
from msfusion_core.method.planner import (
    PLANNER_NAMES,
    DoubleShiftPlanner,
    FixedRulePlanner,
    ParticipantPlan,
    Planner,
    RoundPlan,
    Window,
    make_planner,
    plan_double_shift,
)
from msfusion_core.method.slicing import Slicer, map_previous
from msfusion_core.method.split_map import SplitMap, group_sizes, layer_split_map
from msfusion_core.method.submodel import attach_width_scaler, build_submodel

__all__ = [
    "PLANNER_NAMES",
    "AggregateResult",
    "Contribution",
    "DoubleShiftPlanner",
    "FixedRulePlanner",
    "OverlapSchedule",
    "ParticipantPlan",
    "Planner",
    "RoundPlan",
    "Slicer",
    "SplitMap",
    "Window",
    "attach_width_scaler",
    "build_submodel",
    "group_sizes",
    "layer_split_map",
    "make_planner",
    "map_previous",
    "plan_double_shift",
    "scatter_average",
]
