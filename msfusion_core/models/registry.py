"""Model families, by name: one ``FamilySpec`` each in ``FAMILIES``, added by ``register_family``.

A family's spec says which data sets it takes and builds its ``ModelFamily`` (constructor, split
map, representation layer) for a run's class count, width and depth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from msfusion_core.registry import register
from msfusion_core.method.split_map import SplitMap, model_state

__all__ = ["FAMILIES", "FamilySpec", "ModelFamily", "get_family", "make_family", "register_family"]


@dataclass(frozen=True)
class ModelFamily:
    """Everything the generic machinery needs to know about an architecture.

    ``build`` must be deterministic in structure (it is re-run on the meta device to build
    sub-models); ``representation_layer`` names the module whose *input* is the representation z
    used by the contrastive loss (the classifier or LM head; a [B, T, H] input is averaged over T).
    ``local_keys`` are frozen tensors every party builds itself (pretrained embeddings shipped with
    the package): never trained, never sent. ``post_build`` runs on every sub-model after it is
    built (``build_submodel``), for size attributes of the family's own modules.
    """

    name: str
    build: Callable[[], nn.Module]
    split_map: SplitMap
    representation_layer: str
    local_keys: frozenset[str] = frozenset()
    post_build: Callable[[nn.Module], None] | None = None

    @property
    def has_batchnorm(self) -> bool:
        """Whether the evaluated model needs BatchNorm statistics computed for it (static BN)."""
        import torch

        with torch.device("meta"):
            return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.build().modules())


def make_family(
    name: str,
    build: Callable[[], nn.Module],
    split_map_fn: Callable[[nn.Module], SplitMap],
    representation_layer: str,
    local_prefix: str = "",
    post_build: Callable[[nn.Module], None] | None = None,
) -> ModelFamily:
    """A ``ModelFamily`` whose split map is read off a meta-device build; the tensors under
    ``local_prefix`` are its local keys."""
    import torch

    with torch.device("meta"):
        template = build()
    split_map = split_map_fn(template)
    local = frozenset(k for k in model_state(template) if local_prefix and k.startswith(local_prefix))
    if local & set(split_map):
        raise ValueError(f"local (never sent) tensors cannot be split: {sorted(local & set(split_map))[:3]}")
    return ModelFamily(name, build, split_map, representation_layer, local, post_build)


@dataclass(frozen=True)
class FamilySpec:
    """One model family: the data sets it takes (their input shape and task are the family's) and
    ``factory(num_classes, width, layers) -> ModelFamily`` (None: the family's default size;
    ``num_classes`` is a language model's vocabulary size)."""

    name: str
    datasets: tuple[str, ...]
    factory: Callable[[int, int | None, int | None], ModelFamily]


FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    return register(FAMILIES, spec)


def get_family(name: str, num_classes: int = 10, width: int | None = None, layers: int | None = None) -> ModelFamily:
    """``width``: the family's base width (a language model's hidden size); ``layers``: its depth
    (the language model's decoder layers, the residual CNN's blocks per stage)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name].factory(num_classes, width, layers)
