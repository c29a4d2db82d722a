"""The partitioners image and text data share (flwr-datasets, imported only when data is loaded)."""

from __future__ import annotations

import math

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner


class SeededIidPartitioner(IidPartitioner):
    """IID partitions of a seeded random permutation of the rows.

    flwr-datasets' ``IidPartitioner`` takes contiguous shards, which is only IID if the rows are
    already shuffled, and it ignores any seed. Shard sizes match it (``np.array_split``).
    """

    def __init__(self, num_partitions: int, seed: int) -> None:
        super().__init__(num_partitions=num_partitions)
        self._seed = seed
        self._shards: list[np.ndarray] | None = None

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        n = self.dataset.num_rows
        if self.num_partitions > n:
            raise ValueError(
                f"num_partitions ({self.num_partitions}) exceeds the number of rows ({n})"
            )
        if not 0 <= partition_id < self.num_partitions:
            raise ValueError(
                f"partition_id {partition_id} out of range [0, {self.num_partitions})"
            )
        if self._shards is None:
            perm = np.random.default_rng(self._seed).permutation(n)
            self._shards = [np.sort(s) for s in np.array_split(perm, self.num_partitions)]
        return self.dataset.select(self._shards[partition_id])


def make_partitioner(
    kind: str,
    num_partitions: int,
    alpha: float = 0.5,
    seed: int = 42,
    *,
    min_partition_size: int = 10,
    self_balancing: bool = False,
) -> Partitioner:
    """A fresh flwr-datasets partitioner (assign ``.dataset`` before ``load_partition``).

    ``"iid"``: an ``IidPartitioner`` over a ``seed``-shuffled row order. ``"dirichlet"``: label skew
    with ``DirichletPartitioner(partition_by="label", alpha=alpha, seed=seed, ...)``; smaller
    ``alpha`` means more skew. ``min_partition_size`` and ``self_balancing`` keep flwr-datasets'
    defaults (it resamples up to 10 times if a partition would be smaller than the minimum).
    """
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)):
        raise TypeError(f"num_partitions must be an int, got {num_partitions!r}")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    # Checked for every kind (iid ignores alpha) so a bad config fails the same way everywhere.
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if kind == "iid":
        return SeededIidPartitioner(num_partitions=int(num_partitions), seed=seed)
    if kind == "dirichlet":
        if min_partition_size < 0:
            raise ValueError(f"min_partition_size must be >= 0, got {min_partition_size}")
        return DirichletPartitioner(
            num_partitions=int(num_partitions),
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=min_partition_size,
            self_balancing=self_balancing,
            shuffle=True,
            seed=seed,
        )
    raise ValueError(f"unknown partitioner {kind!r}; known partitioners: iid, dirichlet")
