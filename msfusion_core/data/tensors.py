"""What a loaded split is, with no data library behind it: the tensors, the held-out rows, and the
names the loaders accept. A node that trains imports this; only loading data imports ``datasets``."""

from __future__ import annotations

import re
from functools import cache
from typing import NamedTuple

import numpy as np
import torch

IMAGE_DATASETS: tuple[str, ...] = ("digits", "cifar10")
TEXT_DATASETS: tuple[str, ...] = ("wikitext2", "sst2")
DATASETS: tuple[str, ...] = IMAGE_DATASETS + TEXT_DATASETS
PARTITIONERS: tuple[str, ...] = ("iid", "dirichlet")
NUM_CLASSES = {"digits": 10, "cifar10": 10, "sst2": 2}  # WikiText-2's is its vocabulary's size


class TensorData(NamedTuple):
    """A split (or partition) as tensors.

    ``x``: digits float32 ``[N, 1, 8, 8]`` in [0, 1] (pixel / 16); cifar10 uint8 ``[N, 3, 32, 32]``.
    ``y``: int64 ``[N]``.
    """

    x: torch.Tensor
    y: torch.Tensor


@cache
def holdout_rows(num_rows: int, count: int, seed: int) -> np.ndarray:
    """The train rows the server keeps to itself: ``count`` rows of a seeded permutation, sorted
    (read-only; cached, since a node loads its partition every round).

    Drawn independently of the partitioner, so every node drops the same rows whatever its share."""
    if not 0 <= count < num_rows:
        raise ValueError(f"cannot hold out {count} of {num_rows} train rows")
    rows = np.sort(np.random.default_rng([seed, 0x48]).permutation(num_rows)[:count])
    rows.flags.writeable = False
    return rows


_BPE_SPEC = re.compile(r"^bpe-([1-9][0-9]*)$")


def check_tokenizer(spec: str) -> int | None:
    """``word`` (None) or ``bpe-<V>`` (V); ValueError otherwise."""
    if spec == "word":
        return None
    match = _BPE_SPEC.match(spec)
    if match is None or int(match.group(1)) < 260:
        raise ValueError(f"tokenizer must be 'word' or 'bpe-<vocabulary size >= 260>' (e.g. bpe-8192), got {spec!r}")
    return int(match.group(1))
