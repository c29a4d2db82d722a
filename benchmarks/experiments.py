"""Named experiments: a grid of methods × seeds × settings, each run by ``python -m benchmarks.run``.

A method is a set of run-config overrides on the experiment's setting; a variant (E2's P, E3's
tiers) is another set, with its own number of simulated nodes. Baselines run as published: without
the contrastive term (only MSfusion's variants use it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Every msfusion arm pins its form key by key, so that a committed run reproduces whatever the
# app's defaults become. `msfusion-shipped` is the app's default: the abstract's method (windows
# spread across participants, an independent offset per group and round, the adaptive overlap rule
# from o = 0.5, MOON's contrastive term on a quarter of the batches) evaluated by the expectation
# of its sub-models.
SHIPPED = {
    "planner": "msfusion", "overlap-schedule": "adaptive", "overlap-start": 0.5,
    "inclusion-scaling": True, "contrastive-mu": 1.0,
}
METHODS: dict[str, dict[str, Any]] = {
    "msfusion-shipped": SHIPPED,
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
    target: float  # accuracy (fraction) or perplexity a run must reach for rounds/FLOPs-to-target
    num_supernodes: int = 10
    seeds: tuple[int, ...] = (0,)
    variants: tuple[Variant, ...] = field(default_factory=tuple)
    metric: str = "accuracy"  # or "perplexity" (lower is better)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # this experiment's own methods, beside METHODS
    method_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)  # a method's seeds, where not ``seeds``
    small_of: dict[str, str] = field(default_factory=dict)  # arm → its small-model control, for the gap closed
    engine: str = "local"  # how the runner runs it unless told otherwise (benchmarks.run --engine)

    def seeds_of(self, method: str) -> tuple[int, ...]:
        return self.method_seeds.get(method, self.seeds)

    def grid(self) -> list[tuple[str, int, Variant]]:
        variants = self.variants or (Variant("", {}, self.num_supernodes),)
        return [(m, s, v) for v in variants for m in self.methods for s in self.seeds_of(m)]


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


BASELINES = ("fedrolex", "heterofl", "fd", "small", "full")
TRANSFORMER_BASELINES = ("fedrolex", "small", "full")

# Issue 5, sized for 2 CPU cores. At this size the 33k-word embedding (tied with the LM head) is
# 67 % of the LM's parameters, so a sub-model saves less than at the default size (8 × 512).
LM_SETTING: dict[str, Any] = {
    "model": "llama",
    "model-width": 256,
    "model-layers": 4,
    "dataset": "wikitext2",
    "data-path": str(SHARED_DATA / "wikitext2"),
    "partitioner": "iid",
    "seq-len": 64,
    "optimizer": "adamw",
    "lr": 0.002,
    "weight-decay": 0.0,
    "batch-size": 16,
    "local-epochs": 1,
    "local-examples": 32,
    "num-server-rounds": 12,
    "split-ratio-tiers": "0.5",
    "central-eval-examples": 200,
}
SST2_SETTING: dict[str, Any] = {
    "model": "minilm",
    "dataset": "sst2",
    "data-path": str(SHARED_DATA / "sst2"),
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
    "seq-len": 64,
    "optimizer": "adamw",
    "lr": 0.0005,  # 16 local steps in all: 1e-4 left the new head barely trained
    "weight-decay": 0.0,
    "batch-size": 16,
    "local-epochs": 1,
    "local-examples": 32,
    "num-server-rounds": 8,
    "split-ratio-tiers": "0.5",
}

E1_SETTING = cifar_setting(32, **{"num-server-rounds": 40, "split-ratio-tiers": "0.5", "local-examples": 500})

EXPERIMENTS: dict[str, Experiment] = {
    "tiny": Experiment(
        "tiny",
        "Smoke test of the harness: digits, 2 rounds, 2 nodes.",
        {"num-server-rounds": 2, "split-ratio-tiers": "0.5"},
        ("msfusion-shipped", "small"),
        target=0.5,
        num_supernodes=2,
    ),
    "E1": Experiment(
        "E1",
        "CPU scale: CIFAR-10, ResNet-18 width 32, 10 nodes, Dirichlet 0.5, all nodes every round, r = 0.5, "
        "1 local epoch over a fresh 500-example sample of each node's partition per round.",
        E1_SETTING,
        BASELINES,
        target=0.6,
        # Seed 1 exists for small only (`--seeds 1 --methods small`). The summary says how many
        # seeds each row averages.
        seeds=(0, 1),
    ),
    "E2": Experiment(
        "E2",
        "Scalability: P nodes at r = 2/P (fedrolex, small); per-participant FLOPs to the target.",
        cifar_setting(32, **{"num-server-rounds": 40, "local-examples": 500}),
        ("fedrolex", "small"),
        target=0.5,
        variants=tuple(Variant(f"P{p}", {"split-ratio-tiers": str(2 / p)}, p) for p in (4, 8, 16)),
    ),
    "E3": Experiment(
        "E3",
        "Heterogeneous capacities: 12 nodes in tiers r ∈ {1, 1/2, 1/4}; small = the width-1/4 model. 20 rounds (E1 and E2 have 40): "
        "the CPU time this machine had left.",
        cifar_setting(32, **{"num-server-rounds": 20, "split-ratio-tiers": "1.0,0.5,0.25", "local-examples": 500}),
        ("fedrolex", "heterofl", "small"),
        target=0.5,
        num_supernodes=12,
    ),
    "LM": Experiment(
        "LM",
        "WikiText-2 word-level language model: Llama-style decoder (4 layers, hidden 256, 4 heads of 64, FFN 1024, "
        "tied 33,278-word embedding), 8 nodes with contiguous chunks of the training text, r = 0.5, 32 sequences of "
        "64 tokens per node per round (AdamW, fresh each round); perplexity on the first 200 sequences of test/valid.",
        LM_SETTING,
        TRANSFORMER_BASELINES,
        target=2000.0,
        num_supernodes=8,
        metric="perplexity",
    ),
    "SST2": Experiment(
        "SST2",
        "SST-2 fine-tuning of pretrained all-MiniLM-L6-v2 (embeddings frozen and never sent) + linear head, 8 nodes, "
        "Dirichlet 0.5 on the label, r = 0.5, 32 sentences per node per round (AdamW, batches of 16); accuracy on the 872 validation sentences.",
        SST2_SETTING,
        TRANSFORMER_BASELINES,
        target=0.8,
        num_supernodes=8,
    ),
    "E4": Experiment(
        "E4",
        "Full scale (GPU): ResNet-18 width 64, 100 nodes, 10 per round, Dirichlet 0.5, whole partitions.",
        cifar_setting(64, **{"num-server-rounds": 300, "split-ratio-tiers": "0.5", "fraction-train": 0.1}),
        BASELINES,
        target=0.6,
        num_supernodes=100,
    ),
}


# C1 (issue 14): converged and capacity-bound. A compact CNN (CifarCNN, width 32) that full-width
# FedAvg fits markedly better than its width-1/4 slice, and short rounds (250 examples per node),
# so that a run of several hundred rounds fits the 2-core time budget. The lr drops tenfold at
# half and at three quarters of the run (HeteroFL's and FedRolex's schedule): at a constant lr
# (C1v1) full and small still rose 1.5-2.6 points over the last fifth, and single evaluations
# swung by 1-2 points.
C1V1_SETTING: dict[str, Any] = {
    "model": "cifar-cnn",
    "model-width": 32,
    "dataset": "cifar10",
    "data-path": str(SHARED_DATA / "cifar10"),
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
    "local-epochs": 1,
    "local-examples": 250,
    "batch-size": 32,
    "lr": 0.05,
    "num-server-rounds": 300,
    "central-eval-examples": 0,  # the whole 10,000-image test split: binomial sd ≤ 0.5 points
    "eval-every": 10,  # an evaluation of 10,000 images costs about 3 full-width rounds here
}
C1_SETTING: dict[str, Any] = C1V1_SETTING | {"lr-decay-at": "0.5,0.75"}


def _at(method: str, r: float) -> dict[str, Any]:
    return METHODS[method] | {"split-ratio-tiers": str(r)}


C1_ARMS: dict[str, dict[str, Any]] = {
    "small-r0.5": _at("small", 0.5),
    "small-r0.25": _at("small", 0.25),
    # r = 1/8 (conv 4-8-16): C1L showed r = 1/4 is compute-bound on C1 (small at 1,500 rounds beats
    # full at 300); a model this narrow should be flat at its capacity well below full's 0.57.
    "small-r0.125": _at("small", 0.125),
    "fedrolex-r0.25": _at("fedrolex", 0.25),
    "heterofl-r0.25": _at("heterofl", 0.25),
    "fd-r0.25": _at("fd", 0.25),
    # Budget honesty: small given 1.70x (r = 1/2) and 1.73x (r = 1/4) its FLOPs per participant-round
    # as more local examples, what MSfusion with the contrastive term on every batch cost on C1.
    "small-r0.5-flops": _at("small", 0.5) | {"local-examples": 426},
    "small-r0.25-flops": _at("small", 0.25) | {"local-examples": 433},
    # MSfusion as shipped: the app's default, with MOON's term on a quarter of the batches (1.17x
    # small's FLOPs on C1).
    **{f"msfusion-shipped-r{r:g}": _at("msfusion-shipped", r) for r in (0.5, 0.25)},
}
C1 = Experiment(
    "C1",
    "Converged, capacity-bound CIFAR-10: compact CNN (conv 32-64-128, GAP, fc), 10 nodes, Dirichlet 0.5, all nodes "
    "every round, 1 local epoch over a fresh 250-example sample of each node's partition per round, lr 0.05 divided "
    "by 10 after rounds 150 and 225; central accuracy on the whole test split every 10 rounds.",
    C1_SETTING,
    (
        "full", "small-r0.5", "small-r0.25", "fedrolex-r0.25", "heterofl-r0.25", "fd-r0.25",
        "small-r0.5-flops", "small-r0.25-flops", "small-r0.125", "msfusion-shipped-r0.5", "msfusion-shipped-r0.25",
    ),
    target=0.6,
    seeds=(0, 1, 2),
    arms=C1_ARMS,
    method_seeds={m: (0,) for m in ("fedrolex-r0.25", "heterofl-r0.25", "fd-r0.25", "small-r0.5-flops", "small-r0.25-flops")},
    small_of={arm: "small-" + arm.rsplit("-", 1)[1] for arm in C1_ARMS if not arm.startswith("small-")},
)
EXPERIMENTS["C1"] = C1
# C1v1: C1's first protocol, at a constant lr (its curves had not flattened); kept to reproduce
# docs/results/C1v1.
EXPERIMENTS["C1v1"] = replace(
    C1,
    name="C1v1",
    description=C1.description.replace(", lr 0.05 divided by 10 after rounds 150 and 225", ", constant lr 0.05"),
    setting=C1V1_SETTING,
    methods=C1.methods[:8],
)

# C1P (issue 15, part 4): E2's scalability question on C1's protocol. P nodes at r = 2/P, so that
# the federation holds two full models' worth of width; the small control is the width-2/P model.
EXPERIMENTS["C1P"] = Experiment(
    "C1P",
    "Scalability on C1's protocol: P nodes at r = 2/P (P = 4, 8, 16), the width-2/P model trained by all; "
    "otherwise C1's setting.",
    C1_SETTING,
    ("small",),
    target=0.5,
    variants=tuple(Variant(f"P{p}", {"split-ratio-tiers": str(2 / p)}, p) for p in (4, 8, 16)),
)

# C1G (issue 14): C1's protocol at full scale, for a GPU machine: ResNet-18 width 64, 100 nodes of
# which 10 train per round on their whole partitions (about 500 images), 300 rounds.
EXPERIMENTS["C1G"] = Experiment(
    "C1G",
    "C1 at full scale (GPU): ResNet-18 width 64, 100 nodes, 10 per round, Dirichlet 0.5, whole partitions, "
    "300 rounds, lr divided by 10 after rounds 150 and 225; central accuracy on the whole test split every 10 rounds.",
    cifar_setting(64, **{
        "num-server-rounds": 300, "fraction-train": 0.1, "local-epochs": 1, "central-eval-examples": 0,
        "eval-every": 10, "device": "auto", "lr-decay-at": C1_SETTING["lr-decay-at"],
    }),
    ("small-r0.25", "full"),
    target=0.6,
    num_supernodes=100,
    arms=C1_ARMS,
)

# LM2v1 (issue 16, first form): a byte-level BPE of 8,192 tokens, width 256, 6 layers, 100 rounds of
# 2 AdamW steps (32 sequences of 64 tokens). It ran one seed per arm (docs/results/LM2v1): every arm
# ended near 376 test perplexity, above a third of the unigram's 727, and full was 0.7 below small:
# 200 local steps left no headroom to close. Kept so that those runs reproduce.
LM2V1_SETTING: dict[str, Any] = LM_SETTING | {
    "tokenizer": "bpe-8192",
    "model-width": 256,
    "model-layers": 6,
    "partitioner": "articles",
    "num-server-rounds": 100,
    "eval-every": 10,
    "central-eval-examples": 400,
    "lr-decay-at": "0.5,0.75",
}
EXPERIMENTS["LM2v1"] = Experiment(
    "LM2v1",
    "WikiText-2 with a byte-level BPE (8,192 tokens, trained on the train split): Llama-style decoder (6 layers, "
    "hidden 256, 4 heads of 64, FFN 1024, tied embedding), 8 nodes with whole articles, r = 0.5; perplexity on 400 "
    "sequences of the test and validation splits every 10 rounds.",
    LM2V1_SETTING,
    ("full", "small", "fedrolex"),
    target=200.0,
    num_supernodes=8,
    seeds=(0, 1),
    metric="perplexity",
    method_seeds={"fedrolex": (0,)},
    small_of={"fedrolex": "small"},
)

# LM2 (issue 16): out of the unigram regime, sized by what LM2v1 lacked, local steps. A byte-level
# BPE of 2,048 tokens (trained on the train split) keeps the tied embedding at 262 k parameters, so
# the split blocks (heads + FFN) are 80 % of a width-128, 4-layer decoder (benchmarks.lm_tokens
# measures both). 48 rounds x 8 AdamW steps (128 sequences of 64 tokens) per node is 3.1 M training
# tokens, 0.9 of an epoch; at the 7.9 MFLOPs per token measured, a full-width round is about 24 s
# on one core here, so a full run fits in 30 minutes. The lr decays as C1's (/10 after rounds 24
# and 36), so that the last fifth is flat.
LM2_SETTING: dict[str, Any] = LM_SETTING | {
    "tokenizer": "bpe-2048",
    "model-width": 128,
    "model-layers": 4,
    "partitioner": "articles",
    "local-examples": 128,
    "num-server-rounds": 48,
    "eval-every": 4,
    "central-eval-examples": 400,
    "lr-decay-at": "0.5,0.75",
}
EXPERIMENTS["LM2"] = Experiment(
    "LM2",
    "WikiText-2 with a byte-level BPE (2,048 tokens, trained on the train split): Llama-style decoder (4 layers, "
    "hidden 128, 2 heads of 64, FFN 512, tied embedding), 8 nodes with whole articles, r = 0.5, 48 rounds of 8 AdamW "
    "steps, lr 0.002 divided by 10 after rounds 24 and 36; perplexity on 400 sequences of the test and validation "
    "splits every 4 rounds.",
    LM2_SETTING,
    ("full", "small", "fedrolex"),
    target=167.0,  # a third of the unigram's test perplexity under this tokenizer (tokens.json: 502)
    num_supernodes=8,
    seeds=(0, 1),
    metric="perplexity",
    method_seeds={"fedrolex": (0,)},
    small_of={"fedrolex": "small"},
)

# SST2L (issue 16, part 4): SST-2 with pretrained MiniLM, long enough for the curves to flatten, on
# the in-process runner. The lr decays as C1's (/10 after rounds 20 and 30).
SST2L_SETTING = SST2_SETTING | {"num-server-rounds": 40, "eval-every": 4, "lr-decay-at": "0.5,0.75"}
EXPERIMENTS["SST2L"] = Experiment(
    "SST2L",
    "SST-2 fine-tuning of pretrained all-MiniLM-L6-v2 as SST2, 40 rounds (lr 5e-4 divided by 10 after rounds 20 and "
    "30), accuracy on the 872 validation sentences every 4 rounds; msfusion-shipped is the app's default, and "
    "msfusion-shipped-unscaled the same evaluated without the expectation rule.",
    SST2L_SETTING,
    ("full", "small", "msfusion-shipped", "msfusion-shipped-unscaled"),
    target=0.8,
    num_supernodes=8,
    seeds=(0, 1, 2),
    # msfusion-shipped-unscaled: the shipped default with θ evaluated as it is, one change against it:
    # does the expectation rule, which halves the pretrained readers at r = 1/2, cost on a pretrained network?
    arms={"msfusion-shipped-unscaled": SHIPPED | {"inclusion-scaling": False}},
    small_of={m: "small" for m in ("msfusion-shipped", "msfusion-shipped-unscaled")},
)

# C1L (issues 14 and 15): C1 five times longer, 1,500 rounds (75 passes over the data), the lr
# decayed at the same fractions: is C1's headroom capacity, or training that 300 rounds do not give?
EXPERIMENTS["C1L"] = Experiment(
    "C1L",
    C1.description.replace("every 10 rounds", "every 50 rounds").replace("after rounds 150 and 225", "after rounds 750 and 1125")
    + " 1,500 rounds.",
    C1_SETTING | {"num-server-rounds": 1500, "eval-every": 50},
    ("small-r0.25", "full"),
    target=0.6,
    arms=C1_ARMS,
)

# DLM (issue 34): depth windows on a language model, each arm against its own small control at
# the same per-participant cost. LM2's decoder and data, twice as deep: 8 layers, of which a
# participant (r = 1/4) holds 2. `shallow` is the 2-layer model trained by all; `msfusion-depth`
# gives each participant a window of 2 consecutive layers, double-shifted across participants and
# rounds under the adaptive overlap from o = 0.5, and evaluates the expectation of the sub-models
# (each layer's branches scaled by its share, 2/8). Without the contrastive term, so that its
# FLOPs per participant equal shallow's; `-mu1` measures the term once.
DLM_SETTING: dict[str, Any] = LM2_SETTING | {"model-layers": 8, "split-ratio-tiers": "0.25"}
DEPTH = {"planner": "msfusion-depth", "overlap-schedule": "adaptive", "overlap-start": 0.5, "inclusion-scaling": True, "contrastive-mu": 0.0}
DLM_ARMS: dict[str, dict[str, Any]] = {
    "shallow": {"planner": "shallow", "contrastive-mu": 0.0},
    "msfusion-depth": DEPTH,
    # What makes it work: the evaluation rule, the overlap, the window length, the contrastive term.
    "msfusion-depth-unscaled": DEPTH | {"inclusion-scaling": False},
    "msfusion-depth-o0": DEPTH | {"overlap-schedule": "constant", "overlap-start": 0.0},
    "msfusion-depth-o75": DEPTH | {"overlap-schedule": "constant", "overlap-start": 0.75},
    "msfusion-depth-mu1": DEPTH | {"contrastive-mu": 1.0},
    "msfusion-depth-k1": DEPTH | {"split-ratio-tiers": "0.125"},
    "shallow-k1": {"planner": "shallow", "contrastive-mu": 0.0, "split-ratio-tiers": "0.125"},
    "msfusion-depth-k4": DEPTH | {"split-ratio-tiers": "0.5"},
    "shallow-k4": {"planner": "shallow", "contrastive-mu": 0.0, "split-ratio-tiers": "0.5"},
    # Width windows at about the same per-participant FLOPs (every layer at a quarter of its heads
    # and FFN units), and their own small control.
    "msfusion-width": SHIPPED | {"contrastive-mu": 0.0},
    "small": METHODS["small"],
    # The combined form: a window of 4 of the 8 layers, each at half its heads and FFN units.
    "msfusion-combined": DEPTH | {"planner": "msfusion-combined"},
}
EXPERIMENTS["DLM"] = Experiment(
    "DLM",
    "Depth windows on WikiText-2 (byte-level BPE of 2,048 tokens): LM2's Llama-style decoder (hidden 128, 2 heads of "
    "64, FFN 512, tied embedding) with 8 layers, 8 nodes with whole articles, r = 1/4 (2 of the 8 layers), 48 rounds of "
    "8 AdamW steps, lr 0.002 divided by 10 after rounds 24 and 36; perplexity on 400 sequences of the test and "
    "validation splits every 4 rounds. -k1/-k4: windows of 1 and 4 layers (r = 1/8, 1/2) against shallow models of "
    "as many layers; -o0/-o75: the overlap held at 0 and 0.75; -unscaled: θ evaluated as it is; msfusion-width and small: "
    "every layer at a quarter width; msfusion-combined: windows of 4 layers, each at half width.",
    DLM_SETTING,
    ("full", "shallow", "msfusion-depth", "msfusion-depth-unscaled", "msfusion-depth-o0", "msfusion-depth-o75",
     "msfusion-depth-mu1", "msfusion-depth-k1", "shallow-k1", "msfusion-depth-k4", "shallow-k4", "msfusion-width", "small", "msfusion-combined"),
    target=167.0,  # LM2's: a third of the unigram's test perplexity under this tokenizer
    num_supernodes=8,
    seeds=(0, 1, 2),
    metric="perplexity",
    arms=DLM_ARMS,
    method_seeds={m: (0,) for m in DLM_ARMS if m not in ("shallow", "msfusion-depth")},
    small_of={
        "msfusion-depth": "shallow", "msfusion-depth-unscaled": "shallow", "msfusion-depth-o0": "shallow",
        "msfusion-depth-o75": "shallow", "msfusion-depth-mu1": "shallow", "msfusion-depth-k1": "shallow-k1",
        "msfusion-depth-k4": "shallow-k4", "msfusion-width": "small", "msfusion-combined": "shallow",
    },
)

# DC (issue 34): depth windows on images, on C1's protocol (10 nodes, Dirichlet 0.5, 250 fresh
# examples a round, 300 rounds, lr /10 after rounds 150 and 225, the whole test split every 10
# rounds) with a residual CNN of about the compact CNN's cost per image: two stages of 4 identical
# residual blocks (16 and 32 channels). A participant (r = 1/2) holds 2 consecutive blocks of each
# stage; `shallow` is the model with 2 blocks per stage, trained by all.
DC_SETTING: dict[str, Any] = C1_SETTING | {"model": "rescnn", "model-width": 16, "model-layers": 4, "split-ratio-tiers": "0.5"}
EXPERIMENTS["DC"] = Experiment(
    "DC",
    "Depth windows on CIFAR-10, C1's protocol: a residual CNN (stem 16, 4 residual blocks of 16 channels at 16x16, "
    "a 32-channel transition, 4 blocks of 32 channels at 8x8, GAP, fc), 10 nodes, Dirichlet 0.5, 250 fresh examples "
    "per node and round, lr 0.05 divided by 10 after rounds 150 and 225, 300 rounds; r = 1/2: 2 of each stage's 4 "
    "blocks; central accuracy on the whole test split every 10 rounds. -r0.75: width windows, the width-3/4 small model "
    "and the combined form (3 of 4 blocks, each at width 0.87) at r = 3/4, about shallow's FLOPs.",
    DC_SETTING,
    ("full", "shallow", "msfusion-depth", "msfusion-width-r0.75", "small-r0.75", "msfusion-combined-r0.75"),
    target=0.6,
    seeds=(0, 1, 2),
    arms={
        "shallow": DLM_ARMS["shallow"],
        "msfusion-depth": DEPTH,
        # At about shallow's FLOPs per participant (a conv's cost goes with the square of its width):
        # width windows at r = 3/4 against the width-3/4 model trained by all, and the combined form
        # at r = 3/4 (3 of each stage's 4 blocks, each at width 0.87).
        "msfusion-width-r0.75": SHIPPED | {"contrastive-mu": 0.0, "split-ratio-tiers": "0.75"},
        "small-r0.75": METHODS["small"] | {"split-ratio-tiers": "0.75"},
        "msfusion-combined-r0.75": DEPTH | {"planner": "msfusion-combined", "split-ratio-tiers": "0.75"},
    },
    method_seeds={m: (0,) for m in ("msfusion-width-r0.75", "small-r0.75", "msfusion-combined-r0.75")},
    small_of={"msfusion-depth": "shallow", "msfusion-width-r0.75": "small-r0.75", "msfusion-combined-r0.75": "shallow"},
)
