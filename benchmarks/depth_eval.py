"""Evaluation rules for a model trained with depth windows: which single model, or ensemble,
to read out of θ once the run is over.

    python -m benchmarks.depth_eval <run dir> [<run dir> ...] [--out docs/results/DLM/evaluation_rules.json]

For each run (a finished ``msfusion-depth`` run's directory: ``config.json`` and its last
checkpoint's θ), on the run's own central test split:

    expectation   every block's branch outputs scaled by its inclusion share k/L (the app's rule)
    unscaled      θ as it is: every block at full weight
    window mean   the mean loss of the L sub-models of k consecutive blocks (each window once):
                  what a participant's own model scores
    ensemble      the mean of those L sub-models' predicted probabilities: the expectation of the
                  sub-models' outputs taken exactly, at L times the inference cost

For a family with BatchNorm, every model is calibrated on the server's rows first, as the app does.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from msfusion_app.runlog import latest_checkpoint
from msfusion_app.settings import Settings
from msfusion_core.local.training import calibrate_batchnorm, evaluate, logits_of
from msfusion_core.method.inclusion import scale_inputs
from msfusion_core.method.server import THETA_PREFIX
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import group_sizes
from msfusion_core.method.submodel import build_submodel
from msfusion_core.method.windows import Window, window_length
from server_app.evaluation import ServerData


def ensemble_scores(models: list[torch.nn.Module], data, preprocess, batch_size: int = 16) -> tuple[float, float]:
    """(per-token or per-example NLL, accuracy) of the mean of the models' predicted probabilities."""
    for m in models:
        m.eval()
    total, correct, count = 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, int(data.y.shape[0]), batch_size):
            x, y = preprocess(data.x[i : i + batch_size], False, None), data.y[i : i + batch_size]
            probs = torch.stack([F.softmax(logits_of(m(x)).float(), -1) for m in models]).mean(0)
            total += float(F.nll_loss(probs.clamp_min(1e-12).log().reshape(-1, probs.shape[-1]), y.reshape(-1), reduction="sum"))
            correct += float((probs.argmax(-1) == y).sum())
            count += int(y.numel())
    return total / count, correct / count


def rules(run_dir: Path) -> dict:
    settings = Settings.from_mapping(json.loads((run_dir / "config.json").read_text()))
    family = settings.family()
    data = ServerData(settings, family)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise SystemExit(f"{run_dir}: no checkpoint")
    theta = {k[len(THETA_PREFIX) :]: v for k, v in checkpoint.state.items() if k.startswith(THETA_PREFIX)}
    slicer = Slicer(family.split_map)
    capacity = min(float(t) for t in settings.split_ratio_tiers.split(","))

    def model(state):
        m = build_submodel(family.build, state, family.post_build, slicer.stacks)
        if data.calibration is not None:
            calibrate_batchnorm(m, data.calibration, data.preprocess)
        return m

    all_sizes = group_sizes({k: v.shape for k, v in theta.items()}, family.split_map)
    sizes = {g: all_sizes[g] for g in all_sizes.depth}
    whole = {g: np.arange(k) for g, k in all_sizes.items() if g not in all_sizes.depth}
    windows = []
    for start in range(max(sizes.values())):  # each start once, the same in every stack
        units = whole | {s: Window(start % n, window_length(capacity, n), n).indices() for s, n in sizes.items()}
        windows.append(slicer.extract(theta, units))
    shares = {s: np.full(n, window_length(capacity, n) / n) for s, n in sizes.items()}
    window_models = [model(w) for w in windows]
    per_window = [evaluate(m, data.test, data.preprocess) for m in window_models]
    scores = {
        "expectation": evaluate(model(scale_inputs(theta, slicer, shares)), data.test, data.preprocess),
        "unscaled": evaluate(model(theta), data.test, data.preprocess),
        "window_mean": tuple(sum(v) / len(per_window) for v in zip(*per_window)),
        "window_best": min(per_window),
        "ensemble": ensemble_scores(window_models, data.test, data.preprocess),
    }
    out: dict = {"round": checkpoint.server_round}
    for rule, (loss, accuracy) in scores.items():
        out[rule] = {"loss": loss, "accuracy": accuracy} | ({"perplexity": math.exp(loss)} if settings.dataset == "wikitext2" else {})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    found = {run.name: rules(run) for run in args.runs}
    print(json.dumps(found, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
