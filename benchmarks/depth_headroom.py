"""Depth headroom on DLM's data and model, measured without federation: is the deeper decoder better
at all within a budget these machines can run, and what does a fresh AdamW every round cost?

    python -m benchmarks.depth_headroom [--only NAME ...]

Each run trains DLM's decoder with ``layers`` layers in one process on WikiText-2's whole train split
(16 sequences of 64 tokens a step, drawn with replacement, seed 0), with DLM's optimizer and lr,
divided by 10 after 1/2 and 3/4 of the steps as DLM's rounds are. ``restart`` > 0 builds a fresh
optimizer every ``restart`` steps, as each federated round does (DLM: 8 local steps); 0 keeps one.
Test perplexity on the server's 400 sequences is taken at every quarter of the run.

Writes one ``docs/results/DLM/headroom/<name>.json`` per run (finished runs are skipped) and
``docs/results/DLM/headroom/table.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from benchmarks.experiments import EXPERIMENTS
from benchmarks.flower_procs import REPO
from msfusion_app.settings import Settings
from msfusion_core.data import load_test
from msfusion_core.data.text import wikitext_split
from msfusion_core.local.training import evaluate, logits_of, make_optimizer, step_decay, token_loss

OUT = REPO / "docs" / "results" / "DLM" / "headroom"
BATCH_SEED = 0

# name: (layers, steps, restart). 2,400 steps of 16 sequences are about one epoch of the train split.
RUNS: dict[str, tuple[int, int, int]] = {
    "L2-800": (2, 800, 0),
    "L8-800": (8, 800, 0),
    "L2-800-restart8": (2, 800, 8),
    "L8-800-restart8": (8, 800, 8),
    "L1-2400": (1, 2400, 0),
    "L2-2400": (2, 2400, 0),
    "L4-2400": (4, 2400, 0),
    "L8-2400": (8, 2400, 0),
    "L2-4800": (2, 4800, 0),
    "L8-4800": (8, 4800, 0),
}


def train_central(settings: Settings, steps: int, restart: int) -> dict:
    torch.manual_seed(settings.seed)
    model = settings.family().build()
    cfg = settings.train_config()
    path = settings.data_path or None
    train = wikitext_split(path, "train", settings.seq_len, settings.tokenizer)
    test = load_test(settings.dataset, path, limit=settings.central_eval_examples or None, seq_len=settings.seq_len, tokenizer=settings.tokenizer)
    milestones = settings.lr_milestones()
    draws = torch.Generator().manual_seed(BATCH_SEED)
    curve, optimizer, start = [], None, time.perf_counter()
    for step in range(1, steps + 1):
        if optimizer is None or (restart and (step - 1) % restart == 0):
            optimizer = make_optimizer(model, cfg)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * step_decay(step, steps, milestones, 0.1)
        rows = torch.randint(0, int(train.x.shape[0]), (cfg.batch_size,), generator=draws)
        model.train()
        loss = token_loss(logits_of(model(train.x[rows])), train.y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % (steps // 4) == 0:
            test_loss, _ = evaluate(model, test, cfg.preprocess)
            curve.append({"step": step, "test_perplexity": math.exp(test_loss), "seconds": time.perf_counter() - start})
            print(f"  step {step}: test perplexity {curve[-1]['test_perplexity']:.1f} ({curve[-1]['seconds']:.0f} s)", flush=True)
    epochs = steps * cfg.batch_size / int(train.x.shape[0])
    return {"curve": curve, "final_test_perplexity": curve[-1]["test_perplexity"], "epochs": epochs}


def table(results: dict[str, dict]) -> str:
    lines = [
        "| run | layers | steps | epochs | optimizer | test perplexity by quarter | final | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        opt = f"fresh every {r['restart']} steps" if r["restart"] else "one for the run"
        quarters = ", ".join(f"{c['test_perplexity']:.1f}" for c in r["curve"])
        lines.append(
            f"| {name} | {r['layers']} | {r['steps']} | {r['epochs']:.2f} | {opt} | {quarters} | **{r['final_test_perplexity']:.1f}** | {r['curve'][-1]['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="runs to do (default: all)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    base = EXPERIMENTS["DLM"].setting
    for name in args.only or RUNS:
        layers, steps, restart = RUNS[name]
        target = args.out / f"{name}.json"
        if target.exists():
            continue
        print(f"{name}: {layers} layers, {steps} steps, optimizer restart {restart or 'never'}", flush=True)
        settings = Settings.from_mapping(base | {"model-layers": layers})
        result = {"layers": layers, "steps": steps, "restart": restart, "batch_size": settings.batch_size, "lr": settings.lr}
        result |= train_central(settings, steps, restart)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(target)
    done = {n: json.loads((args.out / f"{n}.json").read_text()) for n in RUNS if (args.out / f"{n}.json").exists()}
    (args.out / "table.md").write_text(table(done))
    print(table(done))


if __name__ == "__main__":
    main()
