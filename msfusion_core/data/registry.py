"""The data sets, by name: one ``DatasetSpec`` each in ``DATASETS``, added by ``register_dataset``.

A spec names what the run settings check (partitioners, tokenizer, which models fit is the model
family's) and how to load: its callables import the data libraries only when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from msfusion_core.registry import register
from msfusion_core.data.tensors import TensorData
from msfusion_core.local.augment import Preprocess

__all__ = ["DATASETS", "DatasetSpec", "get_dataset", "register_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """One data set.

    ``num_classes(data_path, tokenizer)``: classes, or a language model's vocabulary size.
    ``partition(data_path, partitioner, num_partitions, partition_id, alpha, seed, seq_len, tokenizer)``:
    one node's train rows. ``test(data_path, limit, split, seq_len, tokenizer)``: an evaluation split
    (``split`` None: the data set's own choice), at least its first ``limit`` rows. Both may return
    cached tensors: ``load_partition`` and ``load_test`` hand out copies.
    ``language_model``: next-token targets; the server reports perplexity and also evaluates the
    ``validation`` split. ``takes_tokenizer``: the run's ``tokenizer`` setting applies to it.
    """

    name: str
    partitioners: tuple[str, ...]
    preprocess: Preprocess
    num_classes: Callable[[str | None, str], int]
    partition: Callable[[str | None, str, int, int, float, int, int, str], TensorData]
    test: Callable[[str | None, int | None, str | None, int, str], TensorData]
    language_model: bool = False
    takes_tokenizer: bool = False


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return register(DATASETS, spec)


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]
