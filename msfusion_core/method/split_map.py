"""Split maps: which tensor dimensions index the units of which width group (SPEC §1).

A split map sends every split parameter/buffer name to one binding per dimension. A binding is
``None`` (the dimension is always kept whole), a group name (one element per unit), or
``(group, block)`` (``block`` consecutive elements per unit: a flattened conv channel of H·W
features, or an attention head of ``head_dim`` rows). Names the map does not mention are kept whole.

Most models are declared more compactly per layer: ``layer_split_map`` turns
``{module name: (out_group, in_group)}`` into the per-tensor form from the module types, so a
family's whole declaration is a small dict.

Depth is declared in the same map: an entry that names a stack of residual blocks (a ModuleList or
Sequential of blocks of identical shape) with ``Blocks`` makes the stack a depth group, one unit
per block. A participant holds a block whole or not at all; its sub-model has only the blocks it
holds, renumbered in order (``Slicer``), so the others cost it nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import torch
from torch import nn

Binding: TypeAlias = str | tuple[str, int] | None


@dataclass(frozen=True)
class Blocks:
    """A split-map entry for a stack of residual blocks ``x + f(x)``: the stack is a depth group of
    one unit per block. ``branch_outputs`` name, within a block, the tensors that end its residual
    branch (attention's and the FFN's output projections; a conv branch's last BatchNorm weight and
    bias): scaling them by p scales f by p, which is how the evaluated model takes a block's
    expected share of sub-models (``inclusion.scale_inputs``)."""

    branch_outputs: tuple[str, ...]


SplitMap: TypeAlias = Mapping[str, tuple[Binding, ...] | Blocks]


class GroupSizes(dict):
    """K per group, ``{group: K}``, knowing which groups are depth groups (block stacks)."""

    def __init__(self, sizes: Mapping[str, int], depth: frozenset[str] | set[str] = frozenset()) -> None:
        super().__init__(sizes)
        self.depth = frozenset(depth)

    def resized(self, sizes: Mapping[str, int]) -> GroupSizes:
        return GroupSizes(sizes, self.depth)


def depth_groups(sizes: Mapping[str, int]) -> frozenset[str]:
    """The depth groups of ``sizes`` (none for a plain dict)."""
    return sizes.depth if isinstance(sizes, GroupSizes) else frozenset()


def block_stacks(split_map: SplitMap) -> dict[str, Blocks]:
    """``{stack module name: Blocks}``: the split map's depth groups, each named by its stack."""
    return {name: entry for name, entry in split_map.items() if isinstance(entry, Blocks)}


@dataclass(frozen=True)
class DimBinding:
    """One tensor dimension bound to a group: unit ``u`` owns elements ``[u*block, (u+1)*block)``."""

    group: str
    block: int = 1


def normalize_binding(binding: Binding) -> DimBinding | None:
    if binding is None:
        return None
    if isinstance(binding, str):
        return DimBinding(binding, 1)
    group, block = binding
    if not isinstance(group, str) or int(block) < 1:
        raise ValueError(f"invalid binding {binding!r}: expected group name or (group, block >= 1)")
    return DimBinding(group, int(block))


def normalize_split_map(split_map: SplitMap) -> dict[str, tuple[DimBinding | None, ...]]:
    """The width bindings, per tensor (``Blocks`` entries are depth, not tensors)."""
    return {name: tuple(normalize_binding(b) for b in dims) for name, dims in split_map.items() if not isinstance(dims, Blocks)}


def block_key(key: str, stack: str) -> tuple[int, str] | None:
    """(block index, name within the block) of ``key`` if it is in a block of ``stack``, else None:
    ``"model.layers.3.mlp.down_proj.weight"`` in ``"model.layers"`` is ``(3, "mlp.down_proj.weight")``."""
    if not key.startswith(stack + "."):
        return None
    index, _, rest = key[len(stack) + 1 :].partition(".")
    return (int(index), rest) if index.isdigit() else None


def stack_blocks(shapes: Mapping[str, torch.Size | tuple[int, ...]], stack: str, blocks: Blocks) -> int:
    """L, the number of blocks of ``stack`` in ``shapes``; a ValueError naming the stack when its
    blocks are not of identical shape or lack a declared branch output."""
    per_block: dict[int, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        if (found := block_key(key, stack)) is not None:
            per_block.setdefault(found[0], {})[found[1]] = tuple(shape)
    if not per_block:
        raise ValueError(f"split map declares blocks at {stack!r}, which holds no parameters of the model")
    if sorted(per_block) != list(range(len(per_block))):
        raise ValueError(f"blocks of {stack!r} are not numbered 0..L-1: {sorted(per_block)}")
    first = per_block[0]
    for i, block in per_block.items():
        if block != first:
            raise ValueError(f"block {i} of {stack!r} differs in its tensors or shapes from block 0: depth units must be identical blocks")
    missing = [name for name in blocks.branch_outputs if name not in first]
    if missing or not blocks.branch_outputs:
        raise ValueError(f"blocks of {stack!r} declare branch outputs {missing or '(none)'} that a block does not have; it has {sorted(first)[:8]}")
    return len(per_block)


def group_sizes(shapes: Mapping[str, torch.Size | tuple[int, ...]], split_map: SplitMap) -> GroupSizes:
    """Infer K_g for every group from the tensor shapes and check that they agree (a depth group's K
    is its number of blocks).

    Raises ValueError naming the tensor and dimension when the split map does not fit the model.
    """
    sizes: dict[str, int] = {}
    first_seen: dict[str, str] = {}
    for name, dims in normalize_split_map(split_map).items():
        if name not in shapes:
            raise ValueError(f"split map names {name!r}, which is not a parameter or buffer of the model")
        shape = tuple(shapes[name])
        if len(dims) != len(shape):
            raise ValueError(
                f"split map gives {len(dims)} dimension bindings for {name!r}, which has shape {shape}"
            )
        for d, binding in enumerate(dims):
            if binding is None:
                continue
            if shape[d] % binding.block:
                raise ValueError(
                    f"{name!r} dim {d} has size {shape[d]}, not a multiple of the block {binding.block} "
                    f"of group {binding.group!r}"
                )
            k = shape[d] // binding.block
            if binding.group not in sizes:
                sizes[binding.group], first_seen[binding.group] = k, f"{name!r} dim {d}"
            elif sizes[binding.group] != k:
                raise ValueError(
                    f"{name!r} dim {d} has {k} units (size {shape[d]}) but group {binding.group!r} has "
                    f"K={sizes[binding.group]} (from {first_seen[binding.group]})"
                )
    stacks = block_stacks(split_map)
    for stack, blocks in stacks.items():
        if stack in sizes:
            raise ValueError(f"split map uses {stack!r} both as a width group and as a block stack")
        sizes[stack] = stack_blocks(shapes, stack, blocks)
    if not sizes:
        raise ValueError("split map binds no dimension to any group: nothing to split")
    return GroupSizes(sizes, set(stacks))


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias key: canonical key}`` for tensors registered under two names (a tied LM head)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        canonical = first.setdefault(id(tensor), key)
        if canonical != key:
            aliases[key] = canonical
    return aliases


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each tied tensor once (under its first name), detached."""
    aliases = tied_aliases(model)
    return {k: v.detach() for k, v in model.state_dict().items() if k not in aliases}


def model_shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model_state(model).items()}


# Per-module-type binding of (out_group, in_group) onto its tensors. Normalisation layers carry
# only the out group (they normalise the units of the layer before them).
def _conv_or_linear(out: Binding, inp: Binding, ndim: int) -> tuple[Binding, ...]:
    return (out, inp) + (None,) * (ndim - 2)


def layer_split_map(model: nn.Module, layers: Mapping[str, tuple[Binding, Binding]]) -> dict[str, tuple[Binding, ...]]:
    """Expand ``{module name: (out_group, in_group)}`` into a per-tensor split map.

    Supported leaves: Linear, Conv1d/2d/3d (groups=1), BatchNorm*, LayerNorm, GroupNorm-free norms
    with a 1-D ``weight``, and Embedding (out_group binds the embedding dimension).
    """
    modules = dict(model.named_modules())
    result: dict[str, tuple[Binding, ...]] = {}
    for name, (out_g, in_g) in layers.items():
        if name not in modules:
            raise ValueError(f"layer split map names module {name!r}, which the model does not have")
        module = modules[name]
        tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        for tname, t in tensors.items():
            full = f"{name}.{tname}" if name else tname
            if isinstance(module, nn.modules.conv._ConvNd):
                if module.groups != 1:
                    raise ValueError(f"{name!r}: grouped/depthwise convolutions are not supported by layer_split_map")
                result[full] = _conv_or_linear(out_g, in_g, t.ndim) if tname == "weight" else (out_g,)
            elif isinstance(module, nn.Linear):
                result[full] = _conv_or_linear(out_g, in_g, t.ndim) if tname == "weight" else (out_g,)
            elif isinstance(module, nn.Embedding):
                result[full] = (None, out_g)
            elif t.ndim == 1:  # BatchNorm / LayerNorm / RMSNorm weights, biases and running stats
                result[full] = (out_g,)
            elif t.ndim == 0:  # e.g. BatchNorm's num_batches_tracked: a scalar, kept whole
                continue
            else:
                raise ValueError(f"layer_split_map cannot bind {full!r} of {type(module).__name__}; give it explicitly")
    return result


# Layers whose output for one unit depends on the other units of the same dimension. BatchNorm and
# affine-only norms are per unit and are not listed; a class named *LayerNorm or *RMSNorm (Hugging
# Face's LlamaRMSNorm, say) is taken to normalise across its last dimension too.
_CROSS_UNIT_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
