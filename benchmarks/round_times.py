"""Wall time of real `flwr run .` simulations: the default app, and CIFAR-10 / ResNet-18 rounds.

    python -m benchmarks.round_times [--repeats 3] [--cifar-rounds 3] [--out docs/results/round_times.json]

Reports the default run's end-to-end wall time (median of ``--repeats``), and for ResNet-18 at base
width 64 and 32 with 10 nodes at r = 0.5: the median round time over rounds 2.. (round 1 also
decodes the data set and queries the nodes), the server's plan + slice + aggregate time as a
fraction of the round, and bytes per node per round against sending the full model (FedAvg).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from msfusion.loopback import REPO
from benchmarks.launch import flwr_run

CIFAR = REPO.parent / "shared" / "data" / "cifar10"


def summarise_rounds(rows: list[dict]) -> dict:
    later = [r for r in rows if r["round"] >= 2]
    med = lambda key: statistics.median(float(r[key]) for r in later)
    server = statistics.median((r["server-plan-slice-seconds"] + r["server-aggregate-seconds"]) / r["round-seconds"] for r in later)
    return {
        "round_seconds_median": med("round-seconds"),
        "first_round_seconds": float(rows[1]["round-seconds"]),
        "server_plan_slice_aggregate_fraction": server,
        "server_plan_slice_seconds": med("server-plan-slice-seconds"),
        "server_aggregate_seconds": med("server-aggregate-seconds"),
        "train_seconds_per_participant": med("train-seconds-per-participant"),
        "bytes_down_per_node": med("bytes-down-per-participant"),
        "bytes_up_per_node": med("bytes-up-per-participant"),
        "fedavg_bytes_per_node_each_way": float(later[0]["full-model-bytes"]),
        "flops_per_participant_round": med("flops-per-participant"),
        "final_accuracy": float(rows[-1]["central-accuracy"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cifar-rounds", type=int, default=3)
    parser.add_argument("--local-examples", type=int, default=500)
    parser.add_argument("--work", default="/tmp/msfusion-round-times")
    parser.add_argument("--out", default="docs/results/round_times.json")
    args = parser.parse_args()
    work = Path(args.work)
    result: dict = {"default_flwr_run": {}, "cifar10_resnet18": {}}

    walls = []
    for i in range(args.repeats):
        run = flwr_run({}, work=work, run_name=f"default-{i}")
        assert run.status == "finished:completed", run.output_tail
        walls.append(run.wall_seconds)
    result["default_flwr_run"] = {
        "rounds": 10,
        "wall_seconds_median": statistics.median(walls),
        "wall_seconds": walls,
        "final_accuracy": run.rows[-1]["central-accuracy"],
    }

    for width in (32, 64):
        config = {
            "model": "resnet18",
            "model-width": width,
            "dataset": "cifar10",
            "data-path": str(CIFAR),
            "split-ratio-tiers": "0.5",
            "num-server-rounds": args.cifar_rounds,
            "local-examples": args.local_examples,
            "batch-size": 64,
            "central-eval-examples": 1000,
        }
        run = flwr_run(config, work=work, run_name=f"cifar-w{width}", num_supernodes=10)
        assert run.status == "finished:completed", run.output_tail
        result["cifar10_resnet18"][f"width{width}"] = {"nodes": 10, "r": 0.5, "local_examples": args.local_examples} | summarise_rounds(run.rows)
        print(json.dumps(result["cifar10_resnet18"][f"width{width}"], indent=2), flush=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
