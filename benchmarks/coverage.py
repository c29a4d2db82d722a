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

from msfusion.loopback import REPO
from msfusion_core.method.coverage import TrainCounts
from msfusion_core.models import get_family
from msfusion_core.method.overlap import ConstantOverlap
from msfusion_core.method.planner import MSfusionPlanner, make_planner
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import group_sizes, model_shapes
from msfusion_core.method.windows import plan_double_shift

SETTINGS = ((0.5, 10), (0.25, 8), (0.125, 16))  # (r, P)


def aligned_windows(t: int, parts: list[tuple[int, float]], sizes: dict[str, int]) -> dict:
    """MSfusion's windows with every group's windows starting aligned (the layout before per-group offsets)."""
    return plan_double_shift(t, parts, sizes, MSfusionPlanner.spread_for(0.5, [r for _, r in parts]))


PLANNERS = {  # label → (round, participants, group sizes) → participant plans; msfusion at constant o = 0.5
    "msfusion (aligned)": aligned_windows,
    "msfusion (per-group)": lambda t, parts, sizes: MSfusionPlanner(ConstantOverlap(0.5)).plan(t, parts, sizes).participants,
    **{name: (lambda t, parts, sizes, n=name: make_planner(n).plan(t, parts, sizes).participants) for name in ("fedrolex", "heterofl", "fd")},
}


def plan_coverage(planner: str, r: float, num: int, rounds: int = 40, width: int = 32) -> dict[str, float]:
    """Never-trained fraction and train-count CV of ResNet-18's conv weights after ``rounds`` rounds."""
    fam = get_family("resnet18", width=width)
    with torch.device("meta"):
        model = fam.build()
    conv = {k: tuple(p.shape) for k, p in model.named_parameters() if p.ndim == 4}
    sizes = group_sizes(model_shapes(model), fam.split_map)
    counts = TrainCounts(Slicer(fam.split_map), conv)
    for t in range(1, rounds + 1):
        counts.add(PLANNERS[planner](t, [(i, r) for i in range(num)], sizes).values())
    never, cv = counts.summary()
    return {"never_trained_fraction": never, "train_count_cv": cv}


def main() -> None:
    rows = {
        label: {f"r={r:g}, P={num}": plan_coverage(label, r, num) for r, num in SETTINGS}
        for label in PLANNERS
    }
    out = REPO / "docs" / "results" / "coverage.json"
    out.write_text(json.dumps({"setting": "ResNet-18 width 32, conv weights, 40 rounds, msfusion at constant overlap 0.5", "planners": rows}, indent=2))
    print("| planner | " + " | ".join(f"r = {r:g}, P = {num}" for r, num in SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for label, cells in rows.items():
        print(f"| {label} | " + " | ".join(f"{c['never_trained_fraction']:.1%} never, CV {c['train_count_cv']:.2f}" for c in cells.values()) + " |")


if __name__ == "__main__":
    main()
