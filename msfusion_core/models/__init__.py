"""Model families: a constructor, its split map and the layer whose input is the representation z."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from msfusion_core.models.cnn import DigitsCNN, digits_cnn_split_map
from msfusion_core.models.resnet import ResNet18, resnet18_split_map
from msfusion_core.split_map import SplitMap


@dataclass(frozen=True)
class ModelFamily:
    """Everything the generic machinery needs to know about an architecture.

    ``build`` must be deterministic in structure (it is re-run on the meta device to build
    sub-models); ``representation_layer`` names the module whose *input* is the representation z
    used by the contrastive loss (typically the classifier).
    """

    name: str
    build: Callable[[], nn.Module]
    split_map: SplitMap
    representation_layer: str


def _family(name: str, build: Callable[[], nn.Module], split_map_fn, representation_layer: str) -> ModelFamily:
    import torch

    with torch.device("meta"):
        split_map = split_map_fn(build())
    return ModelFamily(name, build, split_map, representation_layer)


FAMILY_NAMES = ("digits-cnn", "resnet18")


def get_family(name: str, num_classes: int = 10, width: int | None = None) -> ModelFamily:
    if name == "digits-cnn":
        return _family(name, partial(DigitsCNN, num_classes, width or 32), digits_cnn_split_map, "fc")
    if name == "resnet18":
        return _family(name, partial(ResNet18, num_classes, width or 64), resnet18_split_map, "fc")
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILY_NAMES)}")
