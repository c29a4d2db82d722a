"""E5, systems: where a round's time goes, and measured cost ratios against r², from real runs.

    python -m benchmarks.systems [--experiment E1]

Reads the committed per-round metrics of an experiment (``docs/results/<experiment>/runs``, which
the Flower apps wrote during real `flwr run .` simulations) and writes ``docs/results/E5/``:
per method, the medians over rounds 2.. (round 1 pays one-off model builds and FLOP counting) of
the server's plan + slice time, its aggregate time (decode + validate + aggregate), a client's
sub-model build time and its local train time; and per-participant FLOPs and bytes as fractions of
full-width FedAvg's, next to r². Aggregation throughput against a plain copy of the same bytes is
`benchmarks/core_costs.py`'s, quoted from ``docs/results/core_costs.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.experiments import EXPERIMENTS
from msfusion.loopback import REPO, read_jsonl
from benchmarks.run import finished

TIMES = {
    "server_plan_slice_s": "server-plan-slice-seconds",
    "server_aggregate_s": "server-aggregate-seconds",
    "client_build_s": "build-seconds-per-participant",
    "client_train_s": "train-seconds-per-participant",
    "round_s": "round-seconds",
    "central_eval_s": "eval-seconds",
}


def method_costs(rows: list[dict]) -> dict[str, float]:
    """Medians over rounds ≥ 2 of the round's time components, and of per-participant FLOPs and bytes."""
    later = [r for r in rows if r["round"] >= 2]
    if not later:
        raise ValueError("a run needs at least 2 rounds for steady-state timings")
    out = {name: statistics.median(float(r[key]) for r in later) for name, key in TIMES.items()}
    out["flops_per_participant_round"] = statistics.median(float(r["flops-per-participant"]) for r in later)
    out["bytes_per_participant_round"] = statistics.median(
        float(r["bytes-down-per-participant"]) + float(r["bytes-up-per-participant"]) for r in later
    )
    out["server_share_of_round"] = (out["server_plan_slice_s"] + out["server_aggregate_s"]) / out["round_s"]
    out["build_over_train"] = out["client_build_s"] / out["client_train_s"]
    return out


def systems_summary(runs: Path, r: float, rounds: int) -> dict[str, Any]:
    """Costs of every finished (``rounds`` rounds) seed-0 run in ``runs``."""
    curves = {path.stem.rsplit("-s", 1)[0]: read_jsonl(path) for path in sorted(runs.glob("*-s0.jsonl"))}
    methods = {name: method_costs(rows) for name, rows in curves.items() if finished(rows, rounds)}
    if "full" in methods:
        for m in methods.values():
            m["flops_vs_full"] = m["flops_per_participant_round"] / methods["full"]["flops_per_participant_round"]
            m["bytes_vs_full"] = m["bytes_per_participant_round"] / methods["full"]["bytes_per_participant_round"]
    return {"r": r, "r_squared": r * r, "methods": methods}


def write(summary: dict[str, Any], source: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# E5: systems",
        "",
        f"From the per-round metrics of {source} (real `flwr run .` simulations, 2 CPU cores). Medians over",
        "rounds 2 and later. Reproduce: `python -m benchmarks.systems`.",
        "",
        "| method | round s | server plan + slice s | server aggregate s | server share | client build s | client train s | build / train | FLOPs vs full | bytes vs full |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in summary["methods"].items():
        lines.append(
            f"| {name} | {m['round_s']:.1f} | {m['server_plan_slice_s']:.3f} | {m['server_aggregate_s']:.3f} "
            f"| {m['server_share_of_round']:.1%} | {m['client_build_s']:.3f} | {m['client_train_s']:.2f} "
            f"| {m['build_over_train']:.1%} | {_ratio(m, 'flops_vs_full')} | {_ratio(m, 'bytes_vs_full')} |"
        )
    lines += ["", f"r² = {summary['r_squared']:.4f}.", ""]
    (out / "results.md").write_text("\n".join(lines))


def _ratio(m: dict[str, float], key: str) -> str:
    return f"{m[key]:.3f}" if key in m else "— (no full run)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="E1")
    parser.add_argument("--results", default=str(REPO / "docs" / "results"))
    args = parser.parse_args()
    exp = EXPERIMENTS[args.experiment]
    r = float(exp.setting["split-ratio-tiers"])
    runs = Path(args.results) / exp.name / "runs"
    write(systems_summary(runs, r, exp.setting["num-server-rounds"]), f"`docs/results/{exp.name}/runs`", Path(args.results) / "E5")
    print(f"results: {Path(args.results) / 'E5'}")


if __name__ == "__main__":
    main()
