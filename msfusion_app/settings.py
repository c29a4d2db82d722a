"""Run settings: every knob of the method, parsed from a flat key → scalar mapping.

Flower's run config (``[tool.flwr.app.config]``, ``--run-config``) is such a mapping; so is a
benchmark grid's row. Parsing it here keeps the ServerApp and ClientApp free of knob handling and
gives one place where a bad value becomes a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from msfusion_core.data import DATASETS, get_dataset
from msfusion_core.data.tensors import check_tokenizer
from msfusion_core.models import FAMILIES, ModelFamily, get_family
from msfusion_core.method.overlap import SCHEDULES
from msfusion_core.method.planner import PLANNER_NAMES, Planner, PlannerOptions, check_capacity, make_planner
from msfusion_core.local.augment import Preprocess
from msfusion_core.local.training import OPTIMIZERS, TrainConfig, step_decay
from msfusion_core.method.contrastive import CONTRASTIVE_MU, check_mu


LR_DECAY_FACTOR = 0.1  # the lr is divided by 10 at each of lr-decay-at (HeteroFL's and FedRolex's schedule)


def _coerce(key: str, kind: type, value: Any) -> Any:
    """Accept a value of the field's type (an int for a float field; an integral float for an int)."""
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or float(value).is_integer())
        if kind in (int, float)
        else isinstance(value, str)
    )
    if not ok:
        raise ValueError(f"setting {key!r} must be {kind.__name__}, got {value!r}")
    return kind(value)


@dataclass(frozen=True)
class Settings:
    """One run's configuration; field ``foo_bar`` is run-config key ``foo-bar``."""

    num_server_rounds: int = 10
    planner: str = "msfusion"
    model: str = "digits-cnn"
    model_width: int = 0  # 0: the family's default (32 for digits-cnn, 64 for resnet18, 16 for rescnn, hidden 512 for llama)
    model_layers: int = 0  # llama: decoder layers (default 8); rescnn: blocks per stage (default 4); 0: the default
    dataset: str = "digits"
    data_path: str = ""  # local directory (CIFAR-10/SST-2 Parquet, WikiText-2 .txt); empty: the Hub (or embedded digits)
    seq_len: int = 64  # text: tokens per language-model sequence / maximum tokens of a sentence
    tokenizer: str = "word"  # wikitext2: word (33,278 words) | bpe-<V>, a byte-level BPE trained on the train split
    partitioner: str = "dirichlet"
    dirichlet_alpha: float = 0.5
    split_ratio_tiers: str = "0.5"  # capacities by partition id (cycled); a node's `split-ratio` wins
    overlap_schedule: str = "adaptive"  # msfusion: adaptive (the abstract's) | constant
    overlap_start: float = 0.5  # o_0
    inclusion_scaling: bool = True  # msfusion: the evaluated model scales each unit's readers by its expected share of sub-models
    contrastive_mu: float = CONTRASTIVE_MU  # msfusion's contrastive (MOON) weight; 0 saves its frozen forwards. Baselines train without it
    local_epochs: int = 1
    local_examples: int = 0  # examples drawn per round from the node's partition; 0: all of it
    batch_size: int = 32
    lr: float = 0.05
    lr_decay_at: str = ""  # fractions of num-server-rounds after which the server divides every node's lr by 10
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # sgd | adamw (fresh each round)
    device: str = "cpu"  # local training and central evaluation: cpu, cuda, cuda:N, or auto (cuda if available)
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_reply_fraction: float = 0.5  # a round is applied only if at least this share of its sampled nodes replied validly
    round_timeout: float = 600.0
    central_eval_examples: int = 0  # 0: the whole test split
    eval_every: int = 1  # central evaluation every this many rounds (and after round 0 and the last round)
    seed: int = 0
    output_dir: str = "runs"
    run_name: str = ""  # empty: <planner>-<dataset>-s<seed>-<timestamp>
    resume_from: str = ""  # a run directory: continue it from its last complete round

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> Settings:
        """Parse ``{"num-server-rounds": 3, ...}``; unknown keys and bad values raise ValueError."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if key not in known:
                raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
            values[known[key].name] = _coerce(key, type(known[key].default), value)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        self._check_choices()
        self._check_ranges()
        check_mu(self.contrastive_mu, "contrastive-mu")
        if not 0.0 <= self.overlap_start <= 1.0:
            raise ValueError(f"overlap-start must be in [0, 1], got {self.overlap_start}")
        self.lr_milestones()
        self.capacity_tiers()
        self.make_planner()

    def _check_choices(self) -> None:
        """Names from a fixed set, and the model, data set, tokenizer and partitioner that fit together."""
        choices = {
            "planner": PLANNER_NAMES,
            "model": tuple(FAMILIES),
            "dataset": tuple(DATASETS),
            "optimizer": OPTIMIZERS,
            "overlap_schedule": tuple(SCHEDULES),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name.replace('_', '-')} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto; got {self.device!r}")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"device {self.device!r}: torch sees no CUDA GPU here (use cpu or auto)")
        data = get_dataset(self.dataset)
        if self.partitioner not in data.partitioners:
            raise ValueError(f"partitioner must be one of {', '.join(data.partitioners)} for dataset {self.dataset!r}; got {self.partitioner!r}")
        check_tokenizer(self.tokenizer)
        if self.tokenizer != "word" and not data.takes_tokenizer:
            takers = " or ".join(name for name, spec in DATASETS.items() if spec.takes_tokenizer)
            raise ValueError(f"tokenizer {self.tokenizer!r} is for dataset {takers}; dataset {self.dataset!r} takes only 'word'")
        wanted = FAMILIES[self.model].datasets
        if self.dataset not in wanted:
            fitting = " or ".join(name for name, spec in FAMILIES.items() if self.dataset in spec.datasets) or "none registered"
            raise ValueError(
                f"model {self.model!r} does not fit dataset {self.dataset!r} (it takes {' or '.join(wanted)}); for {self.dataset!r} use model {fitting}"
            )

    def _check_ranges(self) -> None:
        """Counts, fractions and sizes, checked on the server before round 1: a value only the nodes
        reject would fail every node in every round while the global model stays at its initial value."""
        for name in ("num_server_rounds", "local_epochs", "batch_size", "seq_len", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("fraction_train", "fraction_evaluate", "min_reply_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.fraction_train == 0.0:
            raise ValueError("fraction-train must be positive")
        if self.dirichlet_alpha <= 0:
            raise ValueError(f"dirichlet-alpha must be positive, got {self.dirichlet_alpha}")
        ranges = {
            "lr": (0.0, False, None),
            "round_timeout": (0.0, False, None),
            "weight_decay": (0.0, True, None),
            "local_examples": (0, True, None),
            "central_eval_examples": (0, True, None),
            "model_width": (0, True, None),
            "model_layers": (0, True, None),
        }
        for name, (low, inclusive, high) in ranges.items():
            value = getattr(self, name)
            key = name.replace("_", "-")
            if not math.isfinite(value) or value < low or (value == low and not inclusive) or (high is not None and value >= high):
                bound = f"{'>=' if inclusive else '>'} {low}" + (f" and < {high}" if high is not None else "")
                raise ValueError(f"{key} must be {bound}, got {value!r}")

    def capacity_tiers(self) -> list[float]:
        try:
            tiers = [float(t) for t in self.split_ratio_tiers.replace(",", " ").split()]
        except ValueError as exc:
            raise ValueError(f"split-ratio-tiers must be numbers separated by commas, got {self.split_ratio_tiers!r}") from exc
        if not tiers:
            raise ValueError("split-ratio-tiers is empty")
        return [check_capacity(t, "split-ratio-tiers entry") for t in tiers]

    def lr_milestones(self) -> list[float]:
        try:
            milestones = [float(m) for m in self.lr_decay_at.replace(",", " ").split()]
        except ValueError as exc:
            raise ValueError(f"lr-decay-at must be fractions of the run separated by commas, got {self.lr_decay_at!r}") from exc
        if any(not 0.0 < m < 1.0 for m in milestones) or milestones != sorted(set(milestones)):
            raise ValueError(f"lr-decay-at must be increasing fractions in (0, 1), e.g. '0.5,0.75'; got {self.lr_decay_at!r}")
        return milestones

    def lr_factor(self, run_round: int) -> float:
        """The multiplier of every node's lr in round ``run_round`` (the server sends it with each plan)."""
        return step_decay(run_round, self.num_server_rounds, self.lr_milestones(), LR_DECAY_FACTOR)

    def make_planner(self) -> Planner:
        options = PlannerOptions(self.seed, min(self.capacity_tiers()), self.overlap_schedule, self.overlap_start, self.inclusion_scaling)
        return make_planner(self.planner, options)

    def family(self) -> ModelFamily:
        classes = get_dataset(self.dataset).num_classes(self.data_path or None, self.tokenizer)
        return get_family(self.model, classes, self.model_width or None, self.model_layers or None)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            preprocess=self.preprocess(),
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            lr=self.lr,  # μ, τ, the regularised fraction and SGD's momentum: TrainConfig's; μ is the server's, sent with every plan
            weight_decay=self.weight_decay,
            optimizer=self.optimizer,
            device=self.torch_device(),
        )

    def preprocess(self) -> Preprocess:
        """Stored batch -> model input for this run's data set."""
        return get_dataset(self.dataset).preprocess

    def torch_device(self) -> str:
        """The device to compute on: ``auto`` is cuda where torch sees a GPU, else cpu."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def to_mapping(self) -> dict[str, Any]:
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}

    # What may differ between a run and its resumption.
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"resume_from", "num_server_rounds", "output_dir", "run_name", "round_timeout"})

    def differences(self, saved: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Against a run's saved config: the settings it predates (accepted at their default) and
        those that differ (each with both values)."""
        now, default = self.to_mapping(), Settings().to_mapping()
        resumable = {_key(name) for name in self.RESUMABLE}
        added = [k for k in now if k not in saved and now[k] == default[k]]
        changed = [f"{k} (was {saved.get(k)!r}, now {now[k]!r})" for k in now if k not in resumable and k not in added and saved.get(k) != now[k]]
        return [f"{k} = {now[k]!r}" for k in added], changed

    @classmethod
    def run_dir_of(cls, config: Mapping[str, Any]) -> Path | None:
        """Where a run whose settings are refused says so: ``output-dir/run-name``, when both are usable."""
        out, name = config.get(_key("output_dir"), cls.output_dir), config.get(_key("run_name"))
        if not (isinstance(out, str) and isinstance(name, str) and name):
            return None
        return Path(out) / name


def _key(field_name: str) -> str:
    """A field's run-config key: ``foo_bar`` is ``foo-bar``."""
    return field_name.replace("_", "-")
