"""Named experiments: a grid of methods × seeds × settings, each run through `flwr run .`.

A method is a set of run-config overrides on the experiment's setting; a variant (E2's P, E3's
tiers) is another set, with its own number of simulated nodes. Baselines run as published: without
the contrastive term (only MSfusion's variants use it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

METHODS: dict[str, dict[str, Any]] = {
    "msfusion": {"planner": "msfusion"},
    "msfusion-no-contrastive": {"planner": "msfusion", "contrastive-mu": 0.0},
    "msfusion-constant-overlap": {"planner": "msfusion", "overlap-schedule": "constant"},
    "fedrolex": {"planner": "fedrolex", "contrastive-mu": 0.0},
    "heterofl": {"planner": "heterofl", "contrastive-mu": 0.0},
    "fd": {"planner": "fd", "contrastive-mu": 0.0},
    "small": {"planner": "small", "contrastive-mu": 0.0},
    "full": {"planner": "full", "contrastive-mu": 0.0},
}


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]
    num_supernodes: int


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    setting: dict[str, Any]
    methods: tuple[str, ...]
    target: float  # accuracy (fraction) a run must reach for rounds/FLOPs-to-target
    num_supernodes: int = 10
    seeds: tuple[int, ...] = (0,)
    variants: tuple[Variant, ...] = field(default_factory=tuple)

    def grid(self) -> list[tuple[str, int, Variant]]:
        variants = self.variants or (Variant("", {}, self.num_supernodes),)
        return [(m, s, v) for v in variants for m in self.methods for s in self.seeds]


def cifar_setting(width: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "resnet18",
        "model-width": width,
        "dataset": "cifar10",
        "data-path": str(SHARED_DATA / "cifar10"),
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.5,
        "local-epochs": 1,
        "batch-size": 64,
        "lr": 0.05,
        "central-eval-examples": 2000,
    } | extra


ALL_METHODS = tuple(METHODS)

EXPERIMENTS: dict[str, Experiment] = {
    "tiny": Experiment(
        "tiny",
        "Smoke test of the harness: digits, 2 rounds, 2 nodes.",
        {"num-server-rounds": 2, "split-ratio-tiers": "0.5"},
        ("msfusion", "small"),
        target=0.5,
        num_supernodes=2,
    ),
    "E1": Experiment(
        "E1",
        "CPU scale: CIFAR-10, ResNet-18 width 32, 10 nodes, Dirichlet 0.5, all nodes every round, r = 0.5, "
        "1 local epoch over a fresh 500-example sample of each node's partition per round.",
        cifar_setting(32, **{"num-server-rounds": 40, "split-ratio-tiers": "0.5", "local-examples": 500}),
        ALL_METHODS,
        target=0.6,
    ),
    "E2": Experiment(
        "E2",
        "Scalability: P nodes at r = 2/P (msfusion, fedrolex, small); per-participant FLOPs to the target.",
        cifar_setting(32, **{"num-server-rounds": 40, "local-examples": 500}),
        ("msfusion", "fedrolex", "small"),
        target=0.5,
        variants=tuple(Variant(f"P{p}", {"split-ratio-tiers": str(2 / p)}, p) for p in (4, 8, 16)),
    ),
    "E3": Experiment(
        "E3",
        "Heterogeneous capacities: 12 nodes in tiers r ∈ {1, 1/2, 1/4}; small = the width-1/4 model.",
        cifar_setting(32, **{"num-server-rounds": 40, "split-ratio-tiers": "1.0,0.5,0.25", "local-examples": 500}),
        ("msfusion", "fedrolex", "heterofl", "small"),
        target=0.5,
        num_supernodes=12,
    ),
    "E4": Experiment(
        "E4",
        "Full scale (GPU): ResNet-18 width 64, 100 nodes, 10 per round, Dirichlet 0.5, whole partitions.",
        cifar_setting(64, **{"num-server-rounds": 300, "split-ratio-tiers": "0.5", "fraction-train": 0.1}),
        ALL_METHODS,
        target=0.6,
        num_supernodes=100,
    ),
}
