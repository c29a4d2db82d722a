"""A Llama-style decoder language model from `transformers`, split by attention heads and FFN units,
and in depth by decoder layers.

Per layer i two width groups: ``L{i}.heads`` (q/k/v output rows in blocks of ``head_dim``, o_proj
input columns) and ``L{i}.ffn`` (gate/up output rows, down_proj input columns). The residual width,
embeddings, norms and the (tied) LM head stay whole. Key/value heads equal attention heads, so
dropping a head drops its query, key and value together; `LlamaAttention` reshapes q/k/v with
``view(..., -1, head_dim)``, so a sliced sub-model genuinely runs fewer heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from torch import nn

from msfusion_core.method.split_map import Binding, Blocks
from msfusion_core.models.registry import FamilySpec, ModelFamily, make_family

if TYPE_CHECKING:  # transformers is imported when a model is built, not when the family is registered
    from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class LlamaSize:
    """Defaults sized so the split blocks, not the 33k-word embedding, dominate (tied LM head)."""

    hidden: int = 512
    layers: int = 8
    head_dim: int = 64
    ffn_multiple: int = 4  # intermediate size = ffn_multiple · hidden
    max_positions: int = 512

    @property
    def heads(self) -> int:
        if self.hidden % self.head_dim:
            raise ValueError(f"hidden size {self.hidden} is not a multiple of head_dim {self.head_dim}")
        return self.hidden // self.head_dim


def llama_config(vocab_size: int, size: LlamaSize) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden,
        intermediate_size=size.ffn_multiple * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,  # no grouped-query sharing: a head's q, k and v split together
        head_dim=size.head_dim,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
        attn_implementation="sdpa",
    )


def build_llama_lm(vocab_size: int, size: LlamaSize) -> LlamaForCausalLM:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(llama_config(vocab_size, size))


def llama_split_map(model: LlamaForCausalLM) -> dict[str, tuple[Binding, ...] | Blocks]:
    head_dim = model.config.head_dim
    split: dict[str, tuple[Binding, ...]] = {}
    for i, _layer in enumerate(model.model.layers):
        p, heads, ffn = f"model.layers.{i}", (f"L{i}.heads", head_dim), f"L{i}.ffn"
        for proj in ("q_proj", "k_proj", "v_proj"):
            split[f"{p}.self_attn.{proj}.weight"] = (heads, None)  # [heads·head_dim, hidden]
        split[f"{p}.self_attn.o_proj.weight"] = (None, heads)  # [hidden, heads·head_dim]
        split[f"{p}.mlp.gate_proj.weight"] = (ffn, None)  # [ffn, hidden]
        split[f"{p}.mlp.up_proj.weight"] = (ffn, None)
        split[f"{p}.mlp.down_proj.weight"] = (None, ffn)  # [hidden, ffn]
    # Depth: each decoder layer is a block x + attn(x) + mlp(·), its branches ended by o_proj and down_proj.
    split["model.layers"] = Blocks(("self_attn.o_proj.weight", "mlp.down_proj.weight"))
    return split


def num_heads(attention: nn.Module) -> int:
    """Heads a (sub-)model's attention layer really runs: q_proj rows / head_dim."""
    return attention.q_proj.out_features // attention.head_dim


def llama_family(vocab_size: int, width: int | None, layers: int | None) -> ModelFamily:
    size = LlamaSize(hidden=width or LlamaSize.hidden, layers=layers or LlamaSize.layers)
    return make_family("llama", partial(build_llama_lm, vocab_size, size), llama_split_map, "lm_head")


LLAMA = FamilySpec("llama", ("wikitext2",), llama_family)
