"""Window plans: which units of every width group each participant trains in a round (SPEC §2).

Pure numpy, no torch, no Flower. A plan is deterministic from (seed, round, participant list,
overlap), so a receiver can rebuild it from its compact form and verify it.

Under double shifting windows are cyclic and contiguous: participant slot p (position in the
id-sorted participant list) of P gets, for a group of K units and capacity r,

    m = clamp(round(r·K), 1, K)
    s = (floor(p·c·K / P) − t·δ + offset_g,t) mod K
    I = {(s + j) mod K : j < m}

The inter-participant spread c ∈ [0, 1] sets the overlap (c = 0: everyone shares one window, which
is FedRolex's rule; c = 1: windows evenly spaced). The inter-round shift rolls windows toward lower
indices by δ units per round, FedRolex's direction (SPEC §2 writes ``+t·δ``; only the sign differs).

A depth group (a stack of ``Blocks``) is planned by the same rules, its units being blocks; how a
participant's capacity is spent between blocks and width is ``depth_share`` (``axis_capacity``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from msfusion_core.method.split_map import depth_groups


def window_length(capacity: float, size: int) -> int:
    """m = clamp(round(r·K), 1, K)."""
    return min(max(round(capacity * size), 1), size)


def axis_capacity(capacity: float, depth: bool, depth_share: float) -> float:
    """A participant's capacity r spent on one axis: r^a on depth groups (the share of blocks it
    holds), r^(1−a) on width groups, so that holding both costs about r. a = 0: width windows only
    (every block held); a = 1: depth windows only (every block at full width)."""
    return capacity ** (depth_share if depth else 1.0 - depth_share)


def window_lengths(capacity: float, group_sizes: Mapping[str, int], depth_share: float = 0.0) -> dict[str, int]:
    """m per group for a participant of ``capacity``."""
    depth = depth_groups(group_sizes)
    return {g: window_length(axis_capacity(capacity, g in depth, depth_share), k) for g, k in group_sizes.items()}


def check_capacity(capacity: float, who: object = "participant") -> float:
    capacity = float(capacity)
    if not (0.0 < capacity <= 1.0) or math.isnan(capacity):
        raise ValueError(f"capacity of {who} must be in (0, 1], got {capacity}")
    return capacity


@dataclass(frozen=True)
class Window:
    """A cyclic window of ``length`` units starting at ``start`` in a group of ``size``."""

    start: int
    length: int
    size: int

    def indices(self) -> np.ndarray:
        return (self.start + np.arange(self.length, dtype=np.int64)) % self.size

    def expected_inclusion(self) -> np.ndarray:
        """[size]: how often each unit is in this window as its start shifts round by round."""
        return np.full(self.size, self.length / self.size)


@dataclass(frozen=True)
class ParticipantPlan:
    """One participant's units for every group: a Window, or a sorted index array (``fd``)."""

    node_id: int
    capacity: float
    groups: Mapping[str, Window | np.ndarray]

    def indices(self, group: str) -> np.ndarray:
        sel = self.groups[group]
        return sel.indices() if isinstance(sel, Window) else sel

    def unit_indices(self) -> dict[str, np.ndarray]:
        return {g: self.indices(g) for g in self.groups}

    def to_compact(self) -> dict[str, Any]:
        """JSON-able form: (start, length, K) per windowed group; an index list only for subsets."""
        windows = {g: [w.start, w.length, w.size] for g, w in self.groups.items() if isinstance(w, Window)}
        subsets = {g: [int(i) for i in s] for g, s in self.groups.items() if not isinstance(s, Window)}
        return {"node_id": self.node_id, "capacity": self.capacity, "windows": windows, "subsets": subsets}

    @classmethod
    def from_compact(cls, compact: Mapping[str, Any], group_sizes: Mapping[str, int]) -> ParticipantPlan:
        """Rebuild and verify a plan against the receiver's own (full-model) group sizes.

        A plan's K may be smaller than the receiver's (the ``small`` baseline's global model is
        itself built at width r); the received tensor shapes are checked against the plan after.
        Raises ValueError naming the group when a window or subset does not fit.
        """
        try:
            node_id, capacity = int(compact["node_id"]), check_capacity(compact["capacity"])
            windows, subsets = dict(compact.get("windows", {})), dict(compact.get("subsets", {}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed plan: {exc!r}") from exc
        named = set(windows) | set(subsets)
        if named != set(group_sizes) or set(windows) & set(subsets):
            raise ValueError(
                f"plan groups {sorted(named)} do not match the model's groups {sorted(group_sizes)}"
            )
        groups: dict[str, Window | np.ndarray] = {}
        for g, window in windows.items():
            if not isinstance(window, (list, tuple)) or len(window) != 3:
                raise ValueError(f"plan window for group {g!r} must be [start, length, K], got {window!r}")
            start, length, size = window
            k = group_sizes[g]
            if not (1 <= size <= k) or not (1 <= length <= size) or not (0 <= start < size):
                raise ValueError(f"plan window for group {g!r} is (start={start}, length={length}, K={size}); model K={k}")
            groups[g] = Window(int(start), int(length), int(size))
        for g, idx in subsets.items():
            arr = np.asarray(idx, dtype=np.int64)
            k = group_sizes[g]
            if arr.ndim != 1 or arr.size == 0 or arr.min() < 0 or arr.max() >= k or np.unique(arr).size != arr.size:
                raise ValueError(f"plan subset for group {g!r} is not a set of distinct indices in [0, {k})")
            groups[g] = np.sort(arr)
        return cls(node_id, capacity, groups)


@dataclass(frozen=True)
class RoundPlan:
    server_round: int
    participants: Mapping[int, ParticipantPlan]
    overlap: float = 0.0  # the target overlap o_t this round was planned with
    spread: float = 0.0  # the inter-participant spread c_t it implied

    def coverage(self, group_sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
        """How many participants train each unit of each group."""
        counts = {g: np.zeros(k, dtype=np.int64) for g, k in group_sizes.items()}
        for p in self.participants.values():
            for g, count in counts.items():
                np.add.at(count, p.indices(g), 1)
        return counts

    def coverage_histogram(self, group_sizes: Mapping[str, int]) -> dict[int, int]:
        """{c: number of units (over all groups) trained by exactly c participants}."""
        allc = np.concatenate(list(self.coverage(group_sizes).values()))
        values, counts = np.unique(allc, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


def sorted_participants(participants: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    if len(participants) == 0:
        raise ValueError("cannot plan a round for an empty participant list")
    ids = [int(n) for n, _ in participants]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate participant ids in {ids}")
    return sorted((int(n), check_capacity(r, f"participant {n}")) for n, r in participants)


def plan_double_shift(
    server_round: int,
    participants: Sequence[tuple[int, float]],
    group_sizes: Mapping[str, int],
    spread: float | Mapping[str, float],
    shift_step: int = 1,
    group_offsets: Mapping[str, int] | None = None,
    depth_share: float = 0.0,
) -> dict[int, ParticipantPlan]:
    """Cyclic windows shifted across participants (by spread·K/P per slot; one spread, or one per
    group) and rounds (by shift_step), each group's windows moved by ``group_offsets[g]`` units
    (none: every group starts aligned). ``depth_share``: see ``axis_capacity``."""
    spreads = spread if isinstance(spread, Mapping) else dict.fromkeys(group_sizes, spread)
    if not all(0.0 <= c <= 1.0 for c in spreads.values()):
        raise ValueError(f"spread must be in [0, 1], got {spread}")
    ordered = sorted_participants(participants)
    num = len(ordered)
    plans = {}
    for slot, (node_id, capacity) in enumerate(ordered):
        lengths = window_lengths(capacity, group_sizes, depth_share)
        groups = {
            g: Window((math.floor(slot * spreads[g] * k / num) - server_round * shift_step + (group_offsets or {}).get(g, 0)) % k, lengths[g], k)
            for g, k in group_sizes.items()
        }
        plans[node_id] = ParticipantPlan(node_id, capacity, groups)
    return plans


def per_group_offsets(seed: int, server_round: int, group_sizes: Mapping[str, int]) -> dict[str, int]:
    """An independent, uniformly drawn offset per (seed, round, group). With aligned windows, two
    groups of equal size keep the same relative offset forever, so a weight whose input and output
    units are further apart than a window is in no sub-model, ever (48 % of ResNet-18's conv
    weights at r = 1/4, P = 8). Independent offsets make every pair of units co-trained over rounds."""
    return {g: int(np.random.default_rng([seed, server_round, zlib.crc32(g.encode())]).integers(k)) for g, k in group_sizes.items()}


def plan_static_prefix(
    participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int], depth_share: float = 0.0
) -> dict[int, ParticipantPlan]:
    """HeteroFL: every participant trains the first m units of every group, every round (of every
    width group, all blocks, unless ``depth_share`` spends capacity on blocks)."""
    return {
        n: ParticipantPlan(n, r, {g: Window(0, m, group_sizes[g]) for g, m in window_lengths(r, group_sizes, depth_share).items()})
        for n, r in sorted_participants(participants)
    }


def plan_everything(participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int]) -> dict[int, ParticipantPlan]:
    """Every participant trains every unit of the global model, whatever its capacity."""
    return plan_static_prefix([(n, 1.0) for n, _ in sorted_participants(participants)], group_sizes)


def plan_random_subsets(
    server_round: int, participants: Sequence[tuple[int, float]], group_sizes: Mapping[str, int], seed: int
) -> dict[int, ParticipantPlan]:
    """Federated dropout: m random units per width group, drawn from a generator seeded by (seed, round, node)."""
    plans = {}
    for n, r in sorted_participants(participants):
        rng = np.random.default_rng([seed, server_round, n])
        groups = {g: np.sort(rng.choice(group_sizes[g], m, replace=False)) for g, m in window_lengths(r, group_sizes).items()}
        plans[n] = ParticipantPlan(n, r, groups)
    return plans
