"""Depth headroom on DLM's data and model, measured without federation: is the deeper decoder better
at all within a budget these machines can run, and what does a fresh AdamW every round cost?

    python -m benchmarks.depth_headroom [--only NAME ...]

Each run trains DLM's decoder with ``layers`` layers in one process on WikiText-2's whole train split
(16 sequences of 64 tokens a step, drawn with replacement, seed 0), with DLM's optimizer and lr,
divided by 10 after 1/2 and 3/4 of the steps as DLM's rounds are. ``restart`` > 0 builds a fresh
optimizer every ``restart`` steps, as each federated round does (DLM: 8 local steps); 0 keeps one.
Test perplexity on the server's 400 sequences is taken at every quarter of the run. A run with
a longer context (``seq_len``) takes as many tokens a step, in fewer sequences.

Writes one ``docs/results/DLM/headroom/<name>.json`` per run (finished runs are skipped) and
``docs/results/DLM/headroom/table.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.experiments import EXPERIMENTS
from msfusion.loopback import REPO
from msfusion_app.settings import LR_DECAY_FACTOR, Settings
from msfusion_core.data import load_test
from msfusion_core.data.text import wikitext_split
from msfusion_core.local.training import evaluate, logits_of, make_optimizer, step_decay, token_loss

OUT = REPO / "docs" / "results" / "DLM" / "headroom"
BATCH_SEED = 0


@dataclass(frozen=True)
class Run:
    layers: int
    steps: int
    restart: int = 0  # a fresh optimizer every `restart` steps; 0: one for the run
    seq_len: int = 64


# 2,400 steps of 16 sequences of 64 tokens are 0.69 of an epoch of the train split.
RUNS: dict[str, Run] = {
    "L2-800": Run(2, 800),
    "L8-800": Run(8, 800),
    "L2-800-restart8": Run(2, 800, restart=8),
    "L8-800-restart8": Run(8, 800, restart=8),
    "L1-2400": Run(1, 2400),
    "L2-2400": Run(2, 2400),
    "L4-2400": Run(4, 2400),
    "L8-2400": Run(8, 2400),
    "L2-4800": Run(2, 4800),
    "L8-4800": Run(8, 4800),
    # Does a longer context give depth more to do? The same tokens, 4 sequences of 256 a step.
    "L2-4800-T256": Run(2, 4800, seq_len=256),
    "L8-4800-T256": Run(8, 4800, seq_len=256),
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
            group["lr"] = cfg.lr * step_decay(step, steps, milestones, LR_DECAY_FACTOR)
        rows = torch.randint(0, int(train.x.shape[0]), (cfg.batch_size,), generator=draws)
        model.train()
        loss = token_loss(logits_of(model(cfg.preprocess(train.x[rows], True, None))), train.y[rows])
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
        "| run | layers | context | steps | epochs | optimizer | test perplexity by quarter | final | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        opt = f"fresh every {r['restart']} steps" if r["restart"] else "one for the run"
        quarters = ", ".join(f"{c['test_perplexity']:.1f}" for c in r["curve"])
        lines.append(
            f"| {name} | {r['layers']} | {r['seq_len']} | {r['steps']} | {r['epochs']:.2f} | {opt} | {quarters} | **{r['final_test_perplexity']:.1f}** | {r['curve'][-1]['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(RUNS), help="runs to do (default: all)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    base = EXPERIMENTS["DLM"].setting
    for name in args.only or RUNS:
        run = RUNS[name]
        target = args.out / f"{name}.json"
        if target.exists():
            continue
        print(f"{name}: {run}", flush=True)
        tokens_per_step = base["batch-size"] * base["seq-len"]
        settings = Settings.from_mapping(
            base | {"model-layers": run.layers, "seq-len": run.seq_len, "batch-size": tokens_per_step // run.seq_len}
        )
        result = asdict(run) | {"batch_size": settings.batch_size, "lr": settings.lr}
        result |= train_central(settings, run.steps, run.restart)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(target)
    done = {n: json.loads((args.out / f"{n}.json").read_text()) for n in RUNS if (args.out / f"{n}.json").exists()}
    (args.out / "table.md").write_text(table(done))
    print(table(done))


if __name__ == "__main__":
    main()
