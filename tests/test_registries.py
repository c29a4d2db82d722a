"""A data set and a model family added the way a user adds one: a spec and one registry call each,
then served by the data functions, accepted by the settings and trained on by a federated run."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from msfusion_app.settings import Settings
from msfusion_core.data import DATASETS, DatasetSpec, TensorData, load_partition, load_test, num_classes, register_dataset
from msfusion_core.local.augment import as_float
from msfusion_core.method.split_map import layer_split_map
from msfusion_core.models import FAMILIES, FamilySpec, get_family, make_family, register_family

FEATURES, CLASSES = 8, 3


# -- the toy data set: points whose class is the largest of their first three features ----------
def toy_split(split: str) -> TensorData:
    x = torch.randn(240 if split == "train" else 60, FEATURES, generator=torch.Generator().manual_seed(int(split == "train")))
    return TensorData(x, x[:, :CLASSES].argmax(1))


def toy_partition(data_path, partitioner, num_partitions, partition_id, alpha, seed, seq_len, tokenizer) -> TensorData:
    train = toy_split("train")
    return TensorData(train.x[partition_id::num_partitions], train.y[partition_id::num_partitions])


TOY = DatasetSpec(
    "toy",
    ("iid",),
    as_float,
    num_classes=lambda data_path, tokenizer: CLASSES,
    partition=toy_partition,
    test=lambda data_path, limit, split, seq_len, tokenizer: toy_split("test"),
)


# -- the toy model family ------------------------------------------------------------------------
class ToyMLP(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(FEATURES, width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.hidden(x)))


TOY_MLP = FamilySpec(
    "toy-mlp",
    ("toy",),
    lambda classes, width, layers: make_family(
        "toy-mlp", partial(ToyMLP, classes, width or 16), lambda m: layer_split_map(m, {"hidden": ("h", None), "fc": (None, "h")}), "fc"
    ),
)


@pytest.fixture
def toy_registered():
    register_dataset(TOY)
    register_family(TOY_MLP)
    yield
    del DATASETS["toy"], FAMILIES["toy-mlp"]


TOY_RUN = {"dataset": "toy", "model": "toy-mlp", "partitioner": "iid"}


def test_the_registered_toy_is_served_and_accepted(toy_registered):
    part, test = load_partition("toy", None, "iid", 2, 1), load_test("toy", limit=10)
    assert part.x.shape == (120, FEATURES) and test.x.shape == (10, FEATURES) and num_classes("toy") == CLASSES
    settings = Settings.from_mapping(TOY_RUN)
    assert settings.preprocess() is as_float and settings.family().name == "toy-mlp"
    assert get_family("toy-mlp", CLASSES, width=4).build().hidden.out_features == 4
    with pytest.raises(ValueError, match="partitioner must be one of iid for dataset 'toy'; got 'dirichlet'"):
        Settings.from_mapping(TOY_RUN | {"partitioner": "dirichlet"})
    with pytest.raises(ValueError, match="model 'digits-cnn' does not fit dataset 'toy' .*use model toy-mlp"):
        Settings.from_mapping(TOY_RUN | {"model": "digits-cnn"})
    with pytest.raises(ValueError, match="dataset 'toy' is already registered"):
        register_dataset(TOY)


def test_a_federated_run_trains_on_the_toy(toy_registered, tmp_path):
    from msfusion.local_grid import run_local

    config = TOY_RUN | {"num-server-rounds": 2, "output-dir": str(tmp_path), "run-name": "toy", "eval-every": 1}
    result = run_local(config, num_nodes=2, num_threads=1)
    assert set(result.evaluate_metrics_serverapp) >= {1, 2}
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in result.evaluate_metrics_serverapp.values())


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ValueError, match="unknown model family 'toy-mlp'; known: digits-cnn, .*minilm"):
        get_family("toy-mlp")
    with pytest.raises(ValueError, match="model must be one of digits-cnn, .*; got 'toy-mlp'"):
        Settings.from_mapping({"model": "toy-mlp"})
