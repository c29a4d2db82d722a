"""Why a growth step hurts: take a finished C1 run of the starts-as-small arm (a width-r model in
effect, units outside the core silenced), plan the next round at lower overlaps and evaluate the
sub-models it would send, before any training.

    python -m benchmarks.run C1v1 --methods msfusion-grow2-r0.25 --seeds 0
    python -m benchmarks.growth_probe benchmark-runs/C1v1/runs/msfusion-grow2-r0.25-s0 --experiment C1v1

Writes ``docs/results/<experiment>/growth_probe.json``. Lowering o takes trained units out of the shared
core; a sub-model whose remainder window does not reach them lacks them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from msfusion.loopback import REPO
from msfusion_app.runlog import latest_checkpoint
from msfusion_app.settings import Settings
from msfusion_core.data import TensorData, load_partition, load_test
from msfusion_core.local.training import calibrate_batchnorm, evaluate
from msfusion_core.method.server import SubmodelServer
from msfusion_core.method.submodel import build_submodel

OVERLAPS = (1.0, 0.875, 0.75, 0.5)
PROBED = (0, 3, 7)  # participant slots (partition ids) whose sub-models are evaluated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run directory of a core-form arm")
    parser.add_argument("--test-examples", type=int, default=3000)
    parser.add_argument("--experiment", default="C1", help="the experiment the run belongs to: where the result goes")
    args = parser.parse_args()
    settings = Settings.from_mapping(json.loads((args.run / "config.json").read_text()))
    fam, planner = settings.family(), settings.make_planner()
    server = SubmodelServer(fam.build, fam.split_map, planner, seed=settings.seed)
    checkpoint = latest_checkpoint(args.run)
    server.load_state({k: v for k, v in checkpoint.state.items() if k in server.state})
    pre, path = settings.preprocess(), settings.data_path
    test = load_test(settings.dataset, path, limit=args.test_examples)
    calib = load_partition(settings.dataset, path, "iid", 1, 0, seed=settings.seed, holdout=settings.validation_examples)
    calib = TensorData(calib.x[:1024], calib.y[:1024])

    def accuracy(model) -> float:
        calibrate_batchnorm(model, calib, pre)
        return round(evaluate(model, test, pre)[1], 4)

    out = {"run": args.run.name, "round": checkpoint.server_round, "full_model": accuracy(server.global_model()), "submodels": {}}
    capacity = min(settings.capacity_tiers())
    participants = [(p, capacity) for p in range(10)]
    for o in OVERLAPS:
        planner.schedule.state.current = o
        plan = server.plan_round(checkpoint.server_round + 1, participants)
        out["submodels"][str(o)] = [accuracy(build_submodel(fam.build, server.download(plan.participants[p]))) for p in PROBED]
        print(f"o = {o}: sub-model test accuracy before training {out['submodels'][str(o)]} (full model {out['full_model']})")
    (REPO / "docs" / "results" / args.experiment / "growth_probe.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
