"""Offline data sets and federated partitions, as tensors.

``images`` (digits, CIFAR-10) and ``text`` (WikiText-2, SST-2) each load and partition their own
data; both build on ``base`` (the partitioners) and neither imports the other. This module checks
arguments and sends each call to the one that owns the data set. It imports them, and with them
``datasets`` and ``flwr_datasets``, only when data is loaded: a process that trains on tensors it
already has (``tensors.TensorData``) never pays for them.
"""

from __future__ import annotations

import numpy as np

from msfusion_core.data.tensors import DATASETS, IMAGE_DATASETS, NUM_CLASSES, PARTITIONERS, TEXT_DATASETS, TensorData, holdout_rows

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "TensorData",
    "holdout_rows",
    "label_names",
    "load_dataset_dict",
    "load_holdout",
    "load_partition",
    "load_test",
    "make_partitioner",
    "num_classes",
]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def make_partitioner(kind: str, num_partitions: int, alpha: float = 0.5, seed: int = 42, **kwargs):
    """A fresh flwr-datasets partitioner (``base.make_partitioner``)."""
    from msfusion_core.data import base

    return base.make_partitioner(kind, num_partitions, alpha, seed, **kwargs)


def load_dataset_dict(name: str, data_path: str | None = None):
    """An image data set as a Hugging Face ``DatasetDict`` (splits ``train`` and ``test``), cached."""
    _check_name(name)
    if name not in IMAGE_DATASETS:
        raise ValueError(f"load_dataset_dict serves the image data sets ({', '.join(IMAGE_DATASETS)}), not {name!r}")
    from msfusion_core.data import images

    return images.load_dataset_dict(name, data_path)


def load_partition(
    name: str,
    data_path: str | None,
    partitioner: str,
    num_partitions: int,
    partition_id: int,
    alpha: float = 0.5,
    seed: int = 42,
    seq_len: int = 64,
    holdout: int = 0,
    tokenizer: str = "word",
) -> TensorData:
    """Partition ``partition_id`` of the train split of ``name``, as tensors (fresh copies), less
    the ``holdout`` rows the server validates on (``holdout_rows``). WikiText-2 holds nothing out:
    its server validates on the validation split, which no node trains on.

    The first call in a process decodes the whole train split (CIFAR-10: ~5 s on one core);
    later calls with any partitioning only index the cached tensors. ``seq_len``: tokens per
    sequence of the text data sets; ``tokenizer``: WikiText-2's, ``word`` or ``bpe-<V>``.
    """
    _check_name(name)
    if isinstance(partition_id, bool) or not isinstance(partition_id, (int, np.integer)):
        raise TypeError(f"partition_id must be an int, got {partition_id!r}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id {partition_id} out of range [0, {num_partitions})")
    from msfusion_core.data import images, text

    if name in TEXT_DATASETS:
        if name == "wikitext2":
            data = text.wikitext_partition(data_path, partitioner, num_partitions, partition_id, seq_len, tokenizer)
        else:
            data = text.sst2_partition(data_path, partitioner, num_partitions, partition_id, alpha, seed, seq_len, holdout)
        return TensorData(data.x.clone(), data.y.clone())
    return images.image_partition(name, data_path, partitioner, num_partitions, int(partition_id), alpha, seed, holdout)


def load_holdout(
    name: str, data_path: str | None, count: int, seed: int, *, seq_len: int = 64, tokenizer: str = "word"
) -> TensorData:
    """The server's validation data, which no node trains on and which is never the test split:
    ``count`` held-out rows of the train split (``holdout_rows``), or, for WikiText-2, the first
    ``count`` sequences of its own validation split."""
    _check_name(name)
    from msfusion_core.data import images, text

    if name == "wikitext2":
        valid = text.wikitext_split(data_path, "validation", seq_len, tokenizer)
        if not 0 < count <= int(valid.y.shape[0]):
            raise ValueError(f"cannot validate on {count} of WikiText-2's {int(valid.y.shape[0])} validation sequences")
        return TensorData(valid.x[:count].clone(), valid.y[:count].clone())
    if name == "sst2":
        data = text.sst2_holdout(data_path, count, seed, seq_len)
        return TensorData(data.x.clone(), data.y.clone())
    return images.image_holdout(name, data_path, count, seed)


def load_test(
    name: str,
    data_path: str | None = None,
    limit: int | None = None,
    *,
    split: str | None = None,
    seq_len: int = 64,
    tokenizer: str = "word",
) -> TensorData:
    """The evaluation split as tensors (fresh copies), its first ``limit`` rows if given.

    ``split`` defaults to ``test``, except SST-2's ``validation`` (GLUE reports validation accuracy).
    """
    _check_name(name)
    if limit is not None and (isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be None or >= 0, got {limit!r}")
    from msfusion_core.data import images, text

    if name in TEXT_DATASETS:
        split = split or ("validation" if name == "sst2" else "test")
        if name == "wikitext2":
            data = text.wikitext_split(data_path, split, seq_len, tokenizer)
        else:
            data = text.sst2_tensors(data_path, split, seq_len)
        return TensorData(data.x[:limit].clone(), data.y[:limit].clone())
    if split not in (None, "test"):
        raise ValueError(f"{name} has only a test split for evaluation, not {split!r}")
    return images.image_test(name, data_path, limit)


def num_classes(name: str, data_path: str | None = None, tokenizer: str = "word") -> int:
    """Number of classes of ``name``; for ``wikitext2`` the vocabulary size (reads the train split)."""
    _check_name(name)
    if name == "wikitext2":
        from msfusion_core.data import text

        return text.wikitext_vocab_size(data_path, tokenizer)
    return NUM_CLASSES[name]


def label_names(name: str, data_path: str | None = None) -> list[str]:
    """Class names in label order, from the train split's ``ClassLabel`` feature."""
    _check_name(name)
    feature = load_dataset_dict(name, data_path)["train"].features["label"]
    return list(feature.names)
