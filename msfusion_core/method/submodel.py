"""Building a genuinely smaller network from sliced tensors (SPEC §3).

One generic mechanism for every family: instantiate the architecture on the meta device (no
memory, no init cost), put the sliced tensors in place of each leaf's parameters and buffers, and
update the leaf's size attributes so it is the same class at the reduced size. Only the split map
is family-specific; the sub-model's state-dict keys equal the full model's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import nn

from msfusion_core.method.split_map import block_key, tied_aliases

# Size attributes that forward() reads (or that repr/consistency checks read), by leaf type.
_SIZE_ATTRS: list[tuple[type, Callable[[nn.Module], dict[str, object]]]] = [
    (nn.modules.conv._ConvNd, lambda m: {"out_channels": m.weight.shape[0], "in_channels": m.weight.shape[1] * m.groups}),
    (nn.Linear, lambda m: {"out_features": m.weight.shape[0], "in_features": m.weight.shape[1]}),
    (nn.Embedding, lambda m: {"num_embeddings": m.weight.shape[0], "embedding_dim": m.weight.shape[1]}),
    (nn.modules.batchnorm._NormBase, lambda m: {"num_features": _first_1d(m)}),
    (nn.LayerNorm, lambda m: {"normalized_shape": (_first_1d(m),)}),
]


def _first_1d(module: nn.Module) -> int:
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if t.ndim == 1:
            return t.shape[0]
    raise ValueError(f"{type(module).__name__} has no 1-D tensor to read its size from")


def _keep_blocks(model: nn.Module, stack: str, state: Mapping[str, torch.Tensor]) -> None:
    """Cut the ModuleList/Sequential at ``stack`` to the blocks ``state`` holds (none: all)."""
    held = {found[0] for k in state if (found := block_key(k, stack)) is not None}
    blocks = model.get_submodule(stack)
    if not held or len(held) == len(blocks):
        return
    if held != set(range(len(held))):
        raise ValueError(f"state holds blocks {sorted(held)} of {stack!r}; a sub-model's blocks are numbered 0..n-1")
    kept = list(blocks)[: len(held)]
    parent, _, name = stack.rpartition(".")
    setattr(model.get_submodule(parent), name, nn.ModuleList(kept) if isinstance(blocks, nn.ModuleList) else nn.Sequential(*kept))


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build with every parameter moved to the meta device as it is registered: buffers are
    computed for real, and no more than one (uninitialised) parameter is ever allocated."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    with _PATCH_LOCK:
        nn.Module.register_parameter = on_meta
        try:
            yield
        finally:
            nn.Module.register_parameter = register


_PATCH_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _nonpersistent_buffers(build: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
    """Buffers outside the state dict (rotary ``inv_freq``): computed in ``__init__``, so a meta build
    lacks them. They never depend on the split, so one build per family is enough, and it holds no
    weights (a node that trains an eighth of a language model never holds all of it) unless the
    constructor loads real ones (a pretrained checkpoint), which then is built for real."""
    try:
        with _parameters_on_meta():
            model = build()
    except (ValueError, RuntimeError, NotImplementedError):  # a constructor that loads real weights (a pretrained checkpoint)
        model = build()
    persistent = set(model.state_dict())
    return {k: v.detach() for k, v in model.named_buffers() if k not in persistent}


def build_submodel(
    build: Callable[[], nn.Module],
    state: Mapping[str, torch.Tensor],
    post_build: Callable[[nn.Module], None] | None = None,
    stacks: Collection[str] = (),
) -> nn.Module:
    """Instantiate ``build()`` at the sizes of ``state`` (a full or sliced ``model_state``, all keys).

    ``post_build`` is the family's hook for size attributes of its own modules that the generic
    leaf rules below do not know (``ModelFamily.post_build``: BERT attention's head count).
    ``stacks``: the split map's block stacks (``block_stacks``); each keeps only as many blocks as
    ``state`` holds (its blocks 0..n-1, the sub-model's local numbering).

    Tied tensors are given once and stay tied. Raises ValueError naming the key when ``state``
    misses a key of the model or has an extra one.
    """
    with torch.device("meta"):
        model = build()
    for stack in stacks:
        _keep_blocks(model, stack, state)
    aliases = tied_aliases(model)
    expected = set(model.state_dict().keys()) - set(aliases)
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise ValueError(f"state does not match the architecture: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
    modules = dict(model.named_modules())

    def place(key: str, tensor: torch.Tensor) -> None:
        owner, _, attr = key.rpartition(".")
        module = modules[owner]
        if attr in module._parameters:
            requires_grad = module._parameters[attr].requires_grad
            module._parameters[attr] = nn.Parameter(tensor.detach().clone(), requires_grad=requires_grad)
        else:
            module._buffers[attr] = tensor.detach().clone()

    for key, tensor in state.items():
        place(key, tensor)
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    for alias, canonical in aliases.items():  # re-tie: the alias gets the very same tensor
        owner, _, attr = alias.rpartition(".")
        slot = modules[owner]._parameters if attr in modules[owner]._parameters else modules[owner]._buffers
        slot[attr] = tensors[canonical]
    if any(b.device.type == "meta" for b in model.buffers()):
        for key, tensor in _nonpersistent_buffers(build).items():
            place(key, tensor)
    for module in model.modules():
        has_tensors = bool(module._parameters) or bool(module._buffers)
        for cls, sizes in _SIZE_ATTRS:
            if has_tensors and isinstance(module, cls):
                for attr, value in sizes(module).items():
                    setattr(module, attr, value)
                break
    if post_build is not None:
        post_build(model)
    return model
