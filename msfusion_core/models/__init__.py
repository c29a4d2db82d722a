"""Model families: a constructor, its split map and the layer whose input is the representation z."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from msfusion_core.models.cnn import CifarCNN, DigitsCNN, cifar_cnn_split_map, digits_cnn_split_map
from msfusion_core.models.rescnn import ResidualCNN, residual_cnn_split_map
from msfusion_core.models.resnet import ResNet18, resnet18_split_map
from msfusion_core.method.split_map import SplitMap, model_state


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


def _family(
    name: str,
    build: Callable[[], nn.Module],
    split_map_fn,
    representation_layer: str,
    local_prefix: str = "",
    post_build: Callable[[nn.Module], None] | None = None,
) -> ModelFamily:
    import torch

    with torch.device("meta"):
        template = build()
    split_map = split_map_fn(template)
    local = frozenset(k for k in model_state(template) if local_prefix and k.startswith(local_prefix))
    if local & set(split_map):
        raise ValueError(f"local (never sent) tensors cannot be split: {sorted(local & set(split_map))[:3]}")
    return ModelFamily(name, build, split_map, representation_layer, local, post_build)


FAMILY_NAMES = ("digits-cnn", "cifar-cnn", "resnet18", "rescnn", "llama", "minilm")


def get_family(name: str, num_classes: int = 10, width: int | None = None, layers: int | None = None) -> ModelFamily:
    """``num_classes`` is the vocabulary size for the language model; ``width`` its hidden size.
    ``layers``: the language model's decoder layers, the residual CNN's blocks per stage."""
    if name == "digits-cnn":
        return _family(name, partial(DigitsCNN, num_classes, width or 32), digits_cnn_split_map, "fc")
    if name == "cifar-cnn":
        return _family(name, partial(CifarCNN, num_classes, width or 32), cifar_cnn_split_map, "fc")
    if name == "resnet18":
        return _family(name, partial(ResNet18, num_classes, width or 64), resnet18_split_map, "fc")
    if name == "rescnn":
        return _family(name, partial(ResidualCNN, num_classes, width or 16, layers or 4), residual_cnn_split_map, "fc")
    if name == "llama":
        from msfusion_core.models.llama import (
            LlamaSize,
            build_llama_lm,
            llama_split_map,
        )

        size = LlamaSize(hidden=width or LlamaSize.hidden, layers=layers or LlamaSize.layers)
        return _family(name, partial(build_llama_lm, num_classes, size), llama_split_map, "lm_head")
    if name == "minilm":
        from msfusion_core.models.minilm import (
            LOCAL_PREFIX,
            build_minilm_classifier,
            minilm_split_map,
            sync_attention_head_counts,
        )

        if width or layers:
            raise ValueError("minilm's width and depth are fixed by the pretrained checkpoint; leave model-width and model-layers at 0")
        return _family(
            name, partial(build_minilm_classifier, num_classes), minilm_split_map, "classifier", LOCAL_PREFIX, sync_attention_head_counts
        )
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILY_NAMES)}")
