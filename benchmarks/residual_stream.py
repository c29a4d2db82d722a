"""Does more training make the evaluated model worse? A residual MLP whose residual stream is one
width group read through a LayerNorm, on scikit-learn's digits (embedded, no download).

    python -m benchmarks.residual_stream

8 IID nodes, every one at capacity r = 1/8, AdamW (lr 1e-2, fresh each round), 80 rounds, central
accuracy after every round; every participant trains with its planner's contrastive weight (msfusion
1.0 on a quarter of the batches, the baselines 0). The driver is framework-free: the real ``SubmodelServer`` (plans,
slices, aggregation, the evaluated model) and ``Participant`` (real sub-models), no Flower.

Each arm's final and best accuracy are means over a window of ``WINDOW`` consecutive rounds: on
597 test images one evaluation's binomial sd is about 0.8 points at 0.96, so the best single round
of 80 sits above the curve by noise alone. Writes ``docs/results/residual_stream.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from msfusion.loopback import REPO
from msfusion_core.data import TensorData
from msfusion_core.local.participant import Participant
from msfusion_core.local.training import TrainConfig, evaluate
from msfusion_core.method.contrastive import CONTRASTIVE_MU
from msfusion_core.method.planner import Planner, make_planner
from msfusion_core.method.server import Reply, SubmodelServer

NODES, CAPACITY, ROUNDS, WINDOW = 8, 0.125, 80, 5


class ResidualMLP(nn.Module):
    """x [B, 64] → LayerNorm(inp(x)) [B, width] → ``blocks`` residual MLP blocks → head [B, 10]."""

    def __init__(self, width: int = 64, hidden: int = 128, blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.ModuleList(nn.Linear(width, hidden) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, width) for _ in range(blocks))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.inp(x.flatten(1)))  # [B, width]: the residual stream, normalised as a whole
        for up, down in zip(self.fc1, self.fc2):
            h = h + down(F.relu(up(h)))
        return self.head(h)


def residual_mlp_split_map(blocks: int = 2) -> dict[str, tuple]:
    """One group for the residual stream (every block reads and writes it), one per block's hidden layer."""
    split = {
        "inp.weight": ("stream", None),
        "inp.bias": ("stream",),
        "norm.weight": ("stream",),
        "norm.bias": ("stream",),
        "head.weight": (None, "stream"),
    }
    for i in range(blocks):
        split |= {
            f"fc1.{i}.weight": (f"hidden{i}", "stream"),
            f"fc1.{i}.bias": (f"hidden{i}",),
            f"fc2.{i}.weight": ("stream", f"hidden{i}"),
            f"fc2.{i}.bias": ("stream",),
        }
    return split


def digits_split() -> tuple[TensorData, TensorData]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = torch.tensor(x[order] / 16.0, dtype=torch.float32), torch.tensor(y[order])
    return TensorData(x[:1200], y[:1200]), TensorData(x[1200:], y[1200:])


# The arms: msfusion's forms (each evaluated by the expectation rule unless said), and the controls.
ARMS: dict[str, Callable[[int], Planner]] = {
    "msfusion": lambda seed: make_planner("msfusion", seed=seed),  # the default: spread, adaptive o from 0.5
    "msfusion-o0": lambda seed: make_planner("msfusion", seed=seed, overlap_schedule="constant", overlap_start=0.0),
    "msfusion-no-expectation": lambda seed: make_planner("msfusion", seed=seed, inclusion_scaling=False),
    "fedrolex": lambda seed: make_planner("fedrolex", seed=seed),
    "fd": lambda seed: make_planner("fd", seed=seed),
    "small": lambda seed: make_planner("small", seed=seed, small_capacity=CAPACITY),
    "full": lambda seed: make_planner("full", seed=seed),
}


def run(arm: str, seed: int, rounds: int = ROUNDS) -> list[float]:
    """Central accuracy after each round."""
    torch.set_num_threads(1)
    train, test = digits_split()
    planner = ARMS[arm](seed)
    server = SubmodelServer(ResidualMLP, residual_mlp_split_map(), planner, seed=seed)
    participant = Participant(ResidualMLP, residual_mlp_split_map(), "head")
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.0, batch_size=32, mu=CONTRASTIVE_MU if planner.uses_contrastive else 0.0)
    previous = {}  # each node's last sub-model, the contrastive term's negative
    shards = [TensorData(train.x[i::NODES], train.y[i::NODES]) for i in range(NODES)]
    accuracy = []
    for t in range(1, rounds + 1):
        plan = server.plan_round(t, [(i, CAPACITY) for i in range(NODES)])
        replies = []
        for i, shard in enumerate(shards):
            sub = plan.participants[i]
            update, previous[i] = participant.train(sub, server.download(sub), shard, cfg, previous=previous.get(i), seed=seed * 100_000 + t * 100 + i, round_index=t - 1)
            replies.append(Reply(i, update.state, len(shard.y)))
        server.aggregate(plan, replies)
        accuracy.append(evaluate(server.global_model(), test)[1])
    return accuracy


def windowed(accuracy: list[float]) -> tuple[float, float]:
    """(final, best): the last window's mean and the best window's mean."""
    means = np.convolve(accuracy, np.ones(WINDOW) / WINDOW, mode="valid")
    return float(means[-1]), float(means.max())


def main() -> None:
    rows = {}
    for arm in ARMS:
        for seed in (0, 1):
            started = time.perf_counter()
            accuracy = run(arm, seed)
            final, best = windowed(accuracy)
            rows[f"{arm}/s{seed}"] = {"final": final, "best": best, "fall": best - final, "curve": accuracy, "seconds": time.perf_counter() - started}
            print(f"{arm:24s} seed {seed}: final {final:.4f}  best {best:.4f}  fall {100 * (best - final):.1f} pt")
    out = REPO / "docs" / "results" / "residual_stream.json"
    out.write_text(json.dumps({"nodes": NODES, "capacity": CAPACITY, "rounds": ROUNDS, "window": WINDOW, "runs": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
