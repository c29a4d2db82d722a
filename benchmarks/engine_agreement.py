"""How far runs through `flwr run` are from the same runs on the in-process runner.

    python -m benchmarks.engine_agreement [C1]

Compares every ``docs/results/<experiment>/flwr/<run>.jsonl`` (written by
``python -m benchmarks.run <experiment> --engine flwr --methods <arm> --seeds <seed>``, then copied
there) with the committed in-process run of the same name in ``docs/results/<experiment>/runs/``:
the final central metric of each (the experiment's: accuracy or perplexity), and the largest difference at any evaluated round. The two
engines run torch with different thread counts, so trajectories part at float rounding; what this
checks is that they part by less than the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.experiments import EXPERIMENTS
from msfusion.loopback import REPO, read_jsonl
from benchmarks.run import METRICS


def evaluated(path: Path, key: str) -> dict[int, float]:
    return {row["round"]: row[key] for row in read_jsonl(path) if key in row}


def compare(results: Path, metric: str = "accuracy") -> list[dict[str, float | str]]:
    """One row per run in ``results/flwr/``, against ``results/runs/`` of the same name."""
    key = METRICS[metric].key
    rows = []
    for flwr_path in sorted((results / "flwr").glob("*.jsonl")):
        local, flwr = evaluated(results / "runs" / flwr_path.name, key), evaluated(flwr_path, key)
        rounds = sorted(set(local) & set(flwr))
        if not rounds:
            raise ValueError(f"{flwr_path.name}: no evaluated round in common with runs/{flwr_path.name}")
        diffs = {t: abs(local[t] - flwr[t]) for t in rounds}
        worst = max(diffs, key=diffs.__getitem__)
        rows.append({
            "run": flwr_path.stem, "last_round": rounds[-1], "local": local[rounds[-1]], "flwr": flwr[rounds[-1]],
            "max_diff": diffs[worst], "max_diff_round": worst,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", default="C1")
    args = parser.parse_args()
    print("| run | round | in-process | flwr run | largest difference (round) |")
    print("|---|---|---|---|---|")
    for r in compare(REPO / "docs" / "results" / args.experiment, EXPERIMENTS[args.experiment].metric):
        print(f"| {r['run']} | {r['last_round']} | {r['local']:.4f} | {r['flwr']:.4f} | {r['max_diff']:.4f} ({r['max_diff_round']}) |")


if __name__ == "__main__":
    main()
