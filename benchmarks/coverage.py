"""Plan coverage without training: the share of weights no sub-model contained over a run, and
how evenly the others were trained (the CV of per-coordinate train counts), for every planner.

    python -m benchmarks.coverage

Writes ``docs/results/coverage.json`` and prints a table. The setting is the one issue 15 measured
the planner defect on: ResNet-18 width 32, its conv weights, 40 rounds, constant overlap 0.5 for
msfusion, every participant in every round.
"""

from __future__ import annotations

import json

import torch

from benchmarks.flower_procs import REPO
from msfusion_core.method.coverage import TrainCounts
from msfusion_core.models import get_family
from msfusion_core.method.overlap import OverlapSchedule
from msfusion_core.method.planner import make_planner
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import group_sizes, model_shapes

SETTINGS = ((0.5, 10), (0.25, 8), (0.125, 16))  # (r, P)
PLANNERS = {
    "msfusion (aligned)": {"name": "msfusion", "window_offsets": "aligned"},
    "msfusion (per-group)": {"name": "msfusion", "window_offsets": "per-group"},
    "msfusion (core form, per-group)": {"name": "msfusion", "window_offsets": "per-group", "overlap_form": "core"},
    "fedrolex": {"name": "fedrolex"},
    "heterofl": {"name": "heterofl"},
    "fd": {"name": "fd"},
}


def plan_coverage(
    planner: str, r: float, num: int, rounds: int = 40, window_offsets: str = "aligned", width: int = 32, overlap_form: str = "spread"
) -> dict[str, float]:
    """Never-trained fraction and train-count CV of ResNet-18's conv weights after ``rounds`` rounds."""
    fam = get_family("resnet18", width=width)
    with torch.device("meta"):
        model = fam.build()
    conv = {k: tuple(p.shape) for k, p in model.named_parameters() if p.ndim == 4}
    sizes = group_sizes(model_shapes(model), fam.split_map)
    schedule = OverlapSchedule("constant", start=0.5)
    plans = make_planner(planner, schedule=schedule, window_offsets=window_offsets, overlap_form=overlap_form)
    counts = TrainCounts(Slicer(fam.split_map), conv)
    for t in range(1, rounds + 1):
        counts.add(plans.plan(t, [(i, r) for i in range(num)], sizes).participants.values())
    return {"never_trained_fraction": counts.never_trained_fraction(), "train_count_cv": counts.count_cv()}


def main() -> None:
    rows = {
        label: {f"r={r:g}, P={num}": plan_coverage(r=r, num=num, **{"planner": spec["name"]} | {k: v for k, v in spec.items() if k != "name"}) for r, num in SETTINGS}
        for label, spec in PLANNERS.items()
    }
    out = REPO / "docs" / "results" / "coverage.json"
    out.write_text(json.dumps({"setting": "ResNet-18 width 32, conv weights, 40 rounds, msfusion at constant overlap 0.5", "planners": rows}, indent=2))
    print("| planner | " + " | ".join(f"r = {r:g}, P = {num}" for r, num in SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for label, cells in rows.items():
        print(f"| {label} | " + " | ".join(f"{c['never_trained_fraction']:.1%} never, CV {c['train_count_cv']:.2f}" for c in cells.values()) + " |")


if __name__ == "__main__":
    main()
