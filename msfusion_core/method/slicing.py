"""Slicing a state dict to a participant's units, and the positions those slices occupy (SPEC §3).

Everything here works per tensor on index vectors, one per bound dimension (`index_select` for
extraction, flat positions of the Cartesian product for scatters): no Python loop over elements.

Depth groups (``Blocks``) select whole tensors instead: a sub-model holds the blocks of its window
and names them ``stack.0``, ``stack.1``, ... in the full model's order (its *local* keys); the server
keeps θ under the full model's (*global*) keys. ``Slicer.local_key`` and ``to_global`` translate.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from msfusion_core.method.split_map import DimBinding, SplitMap, block_key, block_stacks, normalize_split_map

UnitIndices = Mapping[str, np.ndarray | torch.Tensor]  # group -> unit indices


def _as_long(idx: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx, dtype=torch.long)


def element_indices(binding: DimBinding, units: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Unit indices → element indices along one dimension (``block`` elements per unit)."""
    u = _as_long(units)
    if binding.block == 1:
        return u
    return (u[:, None] * binding.block + torch.arange(binding.block)).reshape(-1)


class Slicer:
    """Precomputed bindings of one model's split map; slices and locates sub-tensors."""

    def __init__(self, split_map: SplitMap) -> None:
        self.bindings = normalize_split_map(split_map)
        self.stacks = block_stacks(split_map)

    def block_of(self, key: str) -> tuple[str, int, str] | None:
        """(stack, block index, name within the block) of a key inside a block stack, else None."""
        for stack in self.stacks:
            if (found := block_key(key, stack)) is not None:
                return stack, *found
        return None

    def local_key(self, key: str, units: UnitIndices) -> str | None:
        """The name of global ``key`` in the sub-model of ``units``; None if it holds not that block."""
        found = self.block_of(key)
        if found is None or found[0] not in units:
            return key
        stack, index, rest = found
        held = np.sort(np.asarray(units[stack]))
        rank = int(np.searchsorted(held, index))
        return f"{stack}.{rank}.{rest}" if rank < held.size and held[rank] == index else None

    def held(self, keys, units: UnitIndices) -> dict[str, str]:
        """``{global key: local key}`` for the ``keys`` the sub-model of ``units`` holds."""
        return {k: local for k in keys if (local := self.local_key(k, units)) is not None}

    def to_global(self, state: Mapping[str, torch.Tensor], units: UnitIndices) -> dict[str, torch.Tensor]:
        """A sub-model's state (local keys) under the full model's keys."""
        out = {}
        for key, tensor in state.items():
            found = self.block_of(key)
            if found is not None and found[0] in units:
                stack, rank, rest = found
                held = np.sort(np.asarray(units[stack]))
                if rank >= held.size:
                    raise ValueError(f"{key!r} names block {rank} of {stack!r}, but the plan holds only {held.size} blocks")
                key = f"{stack}.{int(held[rank])}.{rest}"
            out[key] = tensor
        return out

    def dim_indices(self, name: str, units: UnitIndices) -> list[tuple[int, torch.Tensor]]:
        """(dim, element indices) for every bound dimension of ``name`` (empty if it is kept whole)."""
        return [(d, element_indices(b, units[b.group])) for d, b in enumerate(self.bindings.get(name, ())) if b]

    def sub_shape(self, name: str, shape: torch.Size | tuple[int, ...], units: UnitIndices) -> tuple[int, ...]:
        out = list(shape)
        for d, idx in self.dim_indices(name, units):
            out[d] = idx.numel()
        return tuple(out)

    def extract(self, state: Mapping[str, torch.Tensor], units: UnitIndices, keys=None) -> dict[str, torch.Tensor]:
        """The participant's sub-tensors (contiguous copies) of the blocks it holds, under local keys."""
        out = {}
        for name, local in self.held(keys if keys is not None else state, units).items():
            t = take(state[name], self.dim_indices(name, units))
            out[local] = t.contiguous() if t is not state[name] else t.clone()
        return out

    def flat_positions(self, name: str, shape: torch.Size | tuple[int, ...], units: UnitIndices) -> torch.Tensor | None:
        """Positions in ``full.reshape(-1)`` of the sub-tensor's elements, in the sub-tensor's
        row-major order; ``None`` when the tensor is kept whole."""
        dims = dict(self.dim_indices(name, units))
        return flat_positions(shape, dims) if dims else None


def take(full: torch.Tensor, dims: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """The sub-tensor of ``full`` at the Cartesian product of ``dims`` (as from ``Slicer.dim_indices``)."""
    for d, idx in dims:
        full = full.index_select(d, idx)
    return full


def flat_positions(shape: torch.Size | tuple[int, ...], by_dim: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Row-major flat positions of the Cartesian product of ``by_dim`` indices (other dims whole)."""
    flat = torch.zeros((), dtype=torch.long)
    stride = 1
    strides = []
    for size in reversed(shape):
        strides.append(stride)
        stride *= size
    for d, size in enumerate(shape):
        idx = by_dim[d] if d in by_dim else torch.arange(size)
        flat = flat.unsqueeze(-1) + idx * strides[len(shape) - 1 - d]  # broadcast to [..., n_d]
    return flat.reshape(-1)


def map_previous(
    slicer: Slicer,
    prev_state: Mapping[str, torch.Tensor],
    prev_units: UnitIndices,
    received_state: Mapping[str, torch.Tensor],
    units: UnitIndices,
) -> dict[str, torch.Tensor]:
    """Map a previous sub-model onto this round's units (SPEC §4's negative for the contrastive loss):
    its own previous values where the unit sets overlap, the received values elsewhere. Both states
    and the result are under local keys; a block held in both rounds is matched by its global key."""
    prev_state = slicer.to_global(prev_state, prev_units)
    return {
        slicer.local_key(name, units): _map_tensor(slicer, name, prev_state.get(name), prev_units, received, units)
        for name, received in slicer.to_global(received_state, units).items()
    }


def _map_tensor(
    slicer: Slicer, name: str, prev: torch.Tensor | None, prev_units: UnitIndices, received: torch.Tensor, units: UnitIndices
) -> torch.Tensor:
    if prev is None:
        return received.clone()
    dims = slicer.dim_indices(name, units)
    if not dims:
        return prev.clone()
    prev_dims = dict(slicer.dim_indices(name, prev_units))
    target = received.clone()
    src = prev
    found_by_dim: dict[int, torch.Tensor] = {}
    for d, idx in dims:
        # Position of each of this round's elements in the previous sub-tensor (-1: absent).
        prev_idx = prev_dims[d]
        lookup = torch.full((int(max(idx.max(), prev_idx.max())) + 1,), -1, dtype=torch.long)
        lookup[prev_idx] = torch.arange(prev_idx.numel())
        pos = lookup[idx]
        found = (pos >= 0).nonzero().squeeze(-1)
        src = src.index_select(d, pos[found])
        found_by_dim[d] = found
    if src.numel():
        target.view(-1)[flat_positions(target.shape, found_by_dim)] = src.reshape(-1)
    return target
