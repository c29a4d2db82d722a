"""Offline data sets and federated partitions, as tensors.

Each data set is a ``DatasetSpec`` in ``DATASETS`` (``registry``), written next to its loading
code: ``images`` (digits, CIFAR-10) and ``text`` (WikiText-2, SST-2), both building on ``base``
(the partitioners). The functions here check arguments and dispatch by name. The loaders import
``datasets`` and ``flwr_datasets`` only when they run: a process that trains on tensors it
already has (``tensors.TensorData``) never pays for them.
"""

from __future__ import annotations

import numpy as np

from msfusion_core.data import images, text
from msfusion_core.data.registry import DATASETS, DatasetSpec, get_dataset, register_dataset
from msfusion_core.data.tensors import TensorData

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "TensorData",
    "get_dataset",
    "load_partition",
    "load_test",
    "make_partitioner",
    "num_classes",
    "register_dataset",
]

for _spec in (images.DIGITS, images.CIFAR10, text.WIKITEXT2, text.SST2):
    register_dataset(_spec)


def make_partitioner(kind: str, num_partitions: int, alpha: float = 0.5, seed: int = 42, **kwargs):
    """A fresh flwr-datasets partitioner (``base.make_partitioner``)."""
    from msfusion_core.data import base

    return base.make_partitioner(kind, num_partitions, alpha, seed, **kwargs)


def load_partition(
    name: str,
    data_path: str | None,
    partitioner: str,
    num_partitions: int,
    partition_id: int,
    alpha: float = 0.5,
    seed: int = 42,
    seq_len: int = 64,
    tokenizer: str = "word",
) -> TensorData:
    """Partition ``partition_id`` of the train split of ``name``, as tensors (fresh copies).

    The first call in a process decodes the whole train split (CIFAR-10: ~5 s on one core);
    later calls with any partitioning only index the cached tensors. ``seq_len``: tokens per
    sequence of the text data sets; ``tokenizer``: WikiText-2's, ``word`` or ``bpe-<V>``.
    """
    spec = get_dataset(name)
    if partitioner not in spec.partitioners:
        raise ValueError(f"partitioner must be one of {', '.join(spec.partitioners)} for dataset {name!r}; got {partitioner!r}")
    if isinstance(partition_id, bool) or not isinstance(partition_id, (int, np.integer)):
        raise TypeError(f"partition_id must be an int, got {partition_id!r}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id {partition_id} out of range [0, {num_partitions})")
    data = spec.partition(data_path, partitioner, num_partitions, int(partition_id), alpha, seed, seq_len, tokenizer)
    return TensorData(data.x.clone(), data.y.clone())


def load_test(
    name: str,
    data_path: str | None = None,
    limit: int | None = None,
    *,
    split: str | None = None,
    seq_len: int = 64,
    tokenizer: str = "word",
) -> TensorData:
    """An evaluation split as tensors (fresh copies), its first ``limit`` rows if given.

    ``split`` defaults to the data set's (``test``; SST-2's ``validation``, as GLUE reports).
    """
    spec = get_dataset(name)
    if limit is not None and (isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be None or >= 0, got {limit!r}")
    data = spec.test(data_path, limit, split, seq_len, tokenizer)
    return TensorData(data.x[:limit].clone(), data.y[:limit].clone())


def num_classes(name: str, data_path: str | None = None, tokenizer: str = "word") -> int:
    """Number of classes of ``name``; a language model's vocabulary size (reads the train split)."""
    return get_dataset(name).num_classes(data_path, tokenizer)
