"""What a participant's training costs in memory and time at r = 1, 1/2, 1/4, 1/8, and what a
ClientApp process costs before it trains at all.

    python -m benchmarks.memory [--models resnet18-w64 c1-cnn lm2-llama] [--repeats 3]
    python -m benchmarks.memory --models dlm-width dlm-depth dc-depth --out docs/results/depth_memory

For each model and capacity, ``--repeats`` fresh processes each load the node's partition (read
back from the node's partition cache, as every round after a node's first does), build only the
sub-model from a sliced state and train six one-batch rounds through ``Participant.train``
(``client_app.footprint``). The table gives medians over the processes of

    extra MB   peak RSS while training, above the process's baseline (torch, flwr, data)
    step s     median time of a training step (the FLOP-counting first step excluded)

next to the FLOPs of a step and the bytes a node receives. The import rows time fresh interpreters
side by side, alternating: ``import client_app.app`` against ``torch``, ``flwr.clientapp`` and
``flwr.app`` alone. Writes ``docs/results/memory/summary.json`` and ``table.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.experiments import C1_SETTING, DC_SETTING, DLM_SETTING, LM2_SETTING, cifar_setting
from client_app.app import setup_from_run_config
from client_app.footprint import CAPACITY_TIERS, CACHE_DIR_KEY, in_child, load_in_this_process, measure

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "memory"
NUM_PARTITIONS = 10
# name: (setting, depth share: how a capacity is spent on blocks, as the planner that trains it does)
MODELS: dict[str, tuple[dict[str, Any], float]] = {
    "resnet18-w64": (cifar_setting(64), 0.0),  # batch 64, 32x32 CIFAR-10, SGD with momentum
    "c1-cnn": (C1_SETTING, 0.0),  # batch 32
    "lm2-llama": (LM2_SETTING, 0.0),  # batch 16 sequences of 64 tokens, AdamW
    # DLM's 8-layer decoder: every layer at width r (msfusion, small) or r·L whole layers (msfusion-depth, shallow)
    "dlm-width": (DLM_SETTING, 0.0),
    "dlm-depth": (DLM_SETTING, 1.0),
    "dc-depth": (DC_SETTING, 1.0),  # DC's residual CNN: r·4 whole blocks of each stage
}
IMPORTS = {
    "torch + flwr": "import torch, flwr.clientapp, flwr.app",
    "client_app.app": "import client_app.app",
}
_PEAK = "; print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"


def import_costs(repeats: int) -> dict[str, dict[str, float]]:
    """Median wall time (interpreter start included) and peak RSS of each import, alternating."""
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in IMPORTS}
    for _ in range(repeats):
        for name, statement in IMPORTS.items():
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", statement + _PEAK], cwd=REPO, capture_output=True, text=True, check=True)
            seen[name].append((time.perf_counter() - start, int(out.stdout.split()[-1]) / 1024))
    return {
        name: {"seconds": statistics.median(t for t, _ in runs), "peak_mb": statistics.median(m for _, m in runs)}
        for name, runs in seen.items()
    }


def model_costs(setting: dict[str, Any], repeats: int, cache: str, depth_share: float = 0.0) -> dict[str, Any]:
    node = {"partition-id": 0, "num-partitions": NUM_PARTITIONS, CACHE_DIR_KEY: cache}
    first_load_mb = in_child(load_in_this_process, setup_from_run_config, setting, node)  # fills the partition cache
    rows = []
    for r in sorted(CAPACITY_TIERS, reverse=True):
        runs = [measure(setup_from_run_config, setting, node, r, depth_share=depth_share) for _ in range(repeats)]
        if any(f is None for f in runs):
            raise RuntimeError(f"a measurement at r={r} was killed: is this process under a memory cap?")
        median = {k: statistics.median(getattr(f, k) for f in runs) for k in ("baseline_mb", "extra_mb", "peak_mb", "step_seconds")}
        rows.append({"capacity": r, "batch_size": runs[0].batch_size, **median, "flops_per_step": runs[0].flops_per_step,
                     "bytes_down": runs[0].bytes_down, "bytes_up": runs[0].bytes_up, "extra_mb_each": [f.extra_mb for f in runs]})
    full = rows[0]
    for row in rows:
        row["extra_vs_full"] = row["extra_mb"] / full["extra_mb"]
        row["time_vs_full"] = row["step_seconds"] / full["step_seconds"]
    return {"first_load_peak_mb": first_load_mb, "capacities": rows}


def table(summary: dict[str, Any]) -> str:
    imports = summary["imports"]
    base, app = imports["torch + flwr"], imports["client_app.app"]
    lines = [
        f"Medians of {summary['repeats']} fresh processes per row ({summary['machine']}).",
        "",
        "| import | time | peak RSS |",
        "|---|---|---|",
        *(f"| `{name}` | {v['seconds']:.2f} s | {v['peak_mb']:.0f} MB |" for name, v in imports.items()),
        f"| ratio | {app['seconds'] / base['seconds']:.2f}x | {app['peak_mb'] / base['peak_mb']:.2f}x |",
        "",
        "| model | r | batch | baseline MB | extra peak MB | extra vs r=1 | step s | step vs r=1 | GFLOPs/step | MB received |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cost in summary["models"].items():
        for row in cost["capacities"]:
            lines.append(
                f"| {name} | {row['capacity']:g} | {row['batch_size']} | {row['baseline_mb']:.0f} | {row['extra_mb']:.0f} | "
                f"{row['extra_vs_full']:.2f} | {row['step_seconds']:.3f} | {row['time_vs_full']:.3f} | "
                f"{row['flops_per_step'] / 1e9:.2f} | {row['bytes_down'] / 1e6:.2f} |"
            )
    lines += ["", "First load of a partition (no cache: `datasets`, `flwr_datasets`, decoding), peak RSS of that process:", ""]
    lines += [f"- {name}: {cost['first_load_peak_mb']:.0f} MB" for name, cost in summary["models"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--import-repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    summary: dict[str, Any] = {"repeats": args.repeats, "machine": f"{subprocess.check_output(['nproc']).decode().strip()} cores, CPU"}
    summary["imports"] = import_costs(args.import_repeats)
    print(json.dumps(summary["imports"]), flush=True)
    summary["models"] = {}
    with tempfile.TemporaryDirectory(prefix="msfusion-memory-") as cache:
        for name in args.models:
            setting, depth_share = MODELS[name]
            summary["models"][name] = model_costs(setting, args.repeats, f"{cache}/{name}", depth_share)  # each its own first load
            print(name, json.dumps(summary["models"][name]["capacities"][-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "table.md").write_text(table(summary))
    print(table(summary))


if __name__ == "__main__":
    main()
