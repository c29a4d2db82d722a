"""`import msfusion` is the one import surface for a Flower user: pinned, and light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msfusion

PINNED = [
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


def test_the_api_is_pinned_and_every_name_resolves():
    assert msfusion.__all__ == PINNED
    assert all(getattr(msfusion, name) is not None for name in PINNED)


def test_importing_it_builds_no_app_reads_no_settings_and_loads_no_dataset_library(tmp_path):
    # From another folder, so only the installed package can be imported.
    code = (
        "import sys, msfusion; "
        "print([m for m in ('datasets', 'flwr_datasets', 'pandas', 'client_app.app', 'server_app.app', 'msfusion_app.settings') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_own_model_example_imports_nothing_of_ours_but_msfusion():
    example = (Path(__file__).resolve().parents[1] / "docs" / "examples" / "own_model" / "own_model.py").read_text()
    ours = ("msfusion_core", "msfusion_app", "server_app", "client_app")
    modules = [line.split()[1] for line in example.splitlines() if line.startswith(("import ", "from "))]
    assert "msfusion" in modules
    assert not [m for m in modules if m.split(".")[0] in ours], modules
