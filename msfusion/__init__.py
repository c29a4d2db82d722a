"""MSfusion for Flower: one import for your own app.

    from msfusion import MSfusion, NodeSetup, Participant, TrainConfig, make_client_app

``MSfusion`` is the strategy (a Flower ``Strategy``); ``make_client_app(setup)`` the ClientApp,
where ``setup(context)`` returns the node's ``NodeSetup``. Importing this package builds no app,
reads no settings and imports no dataset library; the project's own apps are ``server_app.app``
and ``client_app.app``.
"""

from client_app.client import NodeSetup, make_client_app, memory_budget, node_capacity
from msfusion_core.data.tensors import TensorData
from msfusion_core.local.augment import as_float
from msfusion_core.local.participant import Participant
from msfusion_core.local.training import TrainConfig, calibrate_batchnorm, evaluate
from msfusion_core.method.overlap import SCHEDULES, AdaptiveOverlap, ConstantOverlap, make_schedule
from msfusion_core.method.planner import PLANNER_NAMES, PLANNERS, MSfusionPlanner, Planner, PlannerOptions, make_planner
from msfusion_core.method.split_map import Binding, Blocks, SplitMap, layer_split_map, model_state
from server_app.strategy import MSfusion

__all__ = [
    "PLANNERS",
    "PLANNER_NAMES",
    "SCHEDULES",
    "AdaptiveOverlap",
    "Binding",
    "Blocks",
    "ConstantOverlap",
    "MSfusion",
    "MSfusionPlanner",
    "NodeSetup",
    "Participant",
    "Planner",
    "PlannerOptions",
    "SplitMap",
    "TensorData",
    "TrainConfig",
    "as_float",
    "calibrate_batchnorm",
    "evaluate",
    "layer_split_map",
    "make_client_app",
    "make_planner",
    "make_schedule",
    "memory_budget",
    "model_state",
    "node_capacity",
]
