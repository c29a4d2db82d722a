"""Transformer families (issue 5): head/FFN splitting of a Llama-style LM and of pretrained MiniLM,
and the WikiText-2 / SST-2 data pipelines."""


import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from msfusion_core.data import TensorData
from msfusion_core.local.augment import token_ids, trim_padding
from msfusion_core.local.measure import count_flops, num_parameters
from msfusion_core.models import get_family
from msfusion_core.models.llama import (
    LlamaSize,
    llama_config,
    llama_split_map,
    num_heads,
)
from msfusion_core.local.participant import Participant
from msfusion_core.method.planner import make_planner
from msfusion_core.method.server import Reply, SubmodelServer
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import group_sizes, model_shapes, model_state
from msfusion_core.method.submodel import build_submodel
from msfusion_core.data.text import (
    article_ids,
    build_vocab,
    lm_sequences,
    tokenize,
    wikitext_partition,
    wikitext_split,
)
from msfusion_core.local.training import TrainConfig, evaluate

TINY = LlamaSize(hidden=64, layers=2, head_dim=16, ffn_multiple=2, max_positions=64)  # 4 heads, 128 FFN units
VOCAB = 50


def tiny_llama(attn: str = "eager") -> LlamaForCausalLM:
    config = llama_config(VOCAB, TINY)
    config._attn_implementation = attn  # eager attention returns its weights: [B, heads, T, T]
    return LlamaForCausalLM(config)


def plan_for(split_map, model, r, t=2):
    sizes = group_sizes(model_shapes(model), split_map)
    return make_planner("msfusion").plan(t, [(1, r), (2, 1.0)], sizes).participants[1]


def test_head_and_ffn_slicing_round_trip_is_bit_exact():
    torch.manual_seed(0)
    full = tiny_llama()
    split = llama_split_map(full)
    slicer, plan = Slicer(split), plan_for(split, full, 0.5)
    units = plan.unit_indices()
    state = model_state(full)
    sub = slicer.extract(state, units)
    heads = units["L1.heads"]
    assert len(heads) == 2 and len(units["L1.ffn"]) == 64
    rows = torch.cat([torch.arange(h * 16, (h + 1) * 16) for h in heads.tolist()])
    assert torch.equal(sub["model.layers.1.self_attn.k_proj.weight"], state["model.layers.1.self_attn.k_proj.weight"][rows])
    assert torch.equal(sub["model.layers.1.self_attn.o_proj.weight"], state["model.layers.1.self_attn.o_proj.weight"][:, rows])
    # Writing the slices back into a blank model reproduces every sliced coordinate bit for bit.
    back = write_back(state, sub, slicer, units)
    for key, full_t in state.items():
        pos = slicer.flat_positions(key, full_t.shape, units)
        if pos is None:
            assert torch.equal(sub[key], full_t)  # embeddings, norms: whole
            continue
        assert torch.equal(back[key].reshape(-1)[pos], full_t.reshape(-1)[pos])


def write_back(state, sub, slicer, units):
    """Full-shaped tensors holding ``sub`` at its coordinates and zeros elsewhere."""
    out = {}
    for k, v in state.items():
        pos = slicer.flat_positions(k, v.shape, units)
        if pos is None:
            out[k] = sub[k].clone()
            continue
        z = torch.zeros(v.numel(), dtype=v.dtype)
        z[pos] = sub[k].reshape(-1)
        out[k] = z.reshape(v.shape)
    return out


def zero_outside(state, slicer, units):
    return write_back(state, slicer.extract(state, units), slicer, units)


def test_llama_submodel_logits_equal_full_model_zero_outside_and_run_fewer_heads():
    torch.manual_seed(1)
    full = tiny_llama()
    split = llama_split_map(full)
    slicer, plan = Slicer(split), plan_for(split, full, 0.5)
    units = plan.unit_indices()
    zeroed = zero_outside(model_state(full), slicer, units)
    full.load_state_dict(zeroed, strict=False)
    full.tie_weights()
    sub = build_submodel(tiny_llama, slicer.extract(zeroed, units))
    assert sub.lm_head.weight is sub.model.embed_tokens.weight  # still tied
    full.eval(), sub.eval()
    x = torch.randint(0, VOCAB, (3, 12))
    out_full, out_sub = full(x, output_attentions=True), sub(x, output_attentions=True)
    torch.testing.assert_close(out_sub.logits, out_full.logits, rtol=1e-4, atol=1e-5)
    # The sub-model's attention really runs 2 of the 4 heads, and its FFN has half the units.
    assert [a.shape[1] for a in out_sub.attentions] == [2, 2] and [a.shape[1] for a in out_full.attentions] == [4, 4]
    attn, mlp = sub.model.layers[0].self_attn, sub.model.layers[0].mlp
    assert num_heads(attn) == 2 and attn.q_proj.weight.shape == (32, 64) and attn.o_proj.weight.shape == (64, 32)
    assert mlp.gate_proj.out_features == 64 and mlp.down_proj.weight.shape == (64, 64)


@pytest.mark.parametrize("r", [0.5, 0.25])
def test_llama_submodel_has_fewer_parameters_and_flops(r):
    fam = get_family("llama", num_classes=1000, width=256, layers=2)  # 4 heads of 64, 1024 FFN units
    torch.manual_seed(0)
    full = fam.build()
    plan = plan_for(fam.split_map, full, r)
    sub = build_submodel(fam.build, Slicer(fam.split_map).extract(model_state(full), plan.unit_indices()), fam.post_build)
    x = torch.randint(0, 1000, (2, 32))
    blocks = sum(p.numel() for n, p in full.named_parameters() if n.startswith("model.layers") and "norm" not in n)
    embed = full.model.embed_tokens.weight.numel()
    # Blocks scale with r (residual width stays whole); embeddings and norms stay.
    expected = embed + r * blocks + sum(p.numel() for n, p in full.named_parameters() if "norm" in n)
    assert num_parameters(sub) == pytest.approx(expected, rel=1e-6)
    assert count_flops(lambda: sub(x)) < count_flops(lambda: full(x)) * (1 - (1 - r) * 0.3)


def test_minilm_loads_offline_and_its_submodel_runs():
    fam = get_family("minilm", num_classes=2)
    assert fam.local_keys and all(k.startswith("bert.embeddings.") for k in fam.local_keys)
    torch.manual_seed(0)
    server = SubmodelServer(fam.build, fam.split_map, make_planner("msfusion"), local_keys=fam.local_keys, post_build=fam.post_build)
    part = Participant(fam.build, fam.split_map, fam.representation_layer, fam.local_keys, fam.post_build)
    plan = server.plan_round(1, [(1, 0.5), (2, 0.5)])
    sent = server.download(plan.participants[1])
    assert not set(sent) & fam.local_keys  # the pretrained embeddings never travel
    sub = part.model(sent)
    layer = sub.bert.encoder.layer[0].attention.self
    assert layer.num_attention_heads == 6 and layer.query.weight.shape == (192, 384)
    assert sub.bert.encoder.layer[0].intermediate.dense.out_features == 768
    # The pretrained embeddings came from the package on both sides.
    torch.testing.assert_close(sub.bert.embeddings.word_embeddings.weight, server.state["bert.embeddings.word_embeddings.weight"])
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 2023, 2003, 2307, 999, 102]])
    assert sub(ids).shape == (2, 2)
    # One local step and one aggregation: only the sub-model's block coordinates move.
    data = TensorData(ids.repeat(4, 1), torch.tensor([0, 1] * 4))
    before = {k: v.clone() for k, v in server.state.items()}
    update, _ = part.train(plan.participants[1], sent, data, TrainConfig(trim_padding, batch_size=4, lr=1e-3, optimizer="adamw"))
    server.validate(plan.participants[1], Reply(1, update.state, 8))
    server.aggregate(plan, [Reply(1, update.state, 8)])
    assert all(torch.equal(server.state[k], before[k]) for k in fam.local_keys)
    key = "bert.encoder.layer.0.output.dense.weight"
    assert not torch.equal(server.state[key], before[key])


SMALL_TEXT = {
    "train.txt": " \n = Alpha = \n \n a b c a \n = = Part = = \n b d \n = Beta = \n \n e a \n c c b \n",
    "valid.txt": " a z b \n",
    "test.txt": " \n c a \n",
}


def test_lm_pipeline_token_counts_on_a_small_text(tmp_path):
    for name, text in SMALL_TEXT.items():
        (tmp_path / name).write_text(text)
    lines = SMALL_TEXT["train.txt"].split("\n")[:-1]
    vocab = build_vocab(lines)
    # words in order of first appearance, <eos> after the first line, <unk> appended
    assert list(vocab) == ["<eos>", "=", "Alpha", "a", "b", "c", "Part", "d", "Beta", "e", "<unk>"]
    tokens = tokenize(lines, vocab)
    assert tokens.numel() == sum(len(line.split()) + 1 for line in lines) == 32
    seqs = lm_sequences(tokens, 5)
    assert seqs.x.shape == (6, 5) and torch.equal(seqs.y[0], tokens[1:6]) and torch.equal(seqs.x[1], tokens[5:10])
    valid = wikitext_split(str(tmp_path), "validation", 2)
    assert valid.x.shape == (1, 2) and valid.x[0, 1] == vocab["<unk>"]  # 'z' is not in the train vocabulary
    assert article_ids(lines).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    # iid: contiguous chunks of the text; articles: whole articles. Both cover every token once.
    for kind in ("iid", "articles"):
        parts = [wikitext_partition(str(tmp_path), kind, 2, p, 1) for p in range(2)]
        assert sum(p.x.numel() for p in parts) == tokens.numel() - 2
    first = wikitext_partition(str(tmp_path), "articles", 2, 0, 1)
    assert torch.equal(first.x[:, 0], tokenize(lines[:6], vocab)[:-1])


def test_llama_round_trains_and_evaluates_perplexity():
    fam = get_family("llama", num_classes=VOCAB, width=64, layers=1)
    torch.manual_seed(0)
    server = SubmodelServer(fam.build, fam.split_map, make_planner("msfusion"))
    part = Participant(fam.build, fam.split_map, fam.representation_layer)
    plan = server.plan_round(1, [(1, 0.5), (2, 0.5)])
    data = lm_sequences(torch.arange(200) % 7, 8)  # a periodic text: learnable in a few steps
    replies = []
    for nid in (1, 2):
        update, _ = part.train(plan.participants[nid], server.download(plan.participants[nid]), data,
                               TrainConfig(token_ids, epochs=3, batch_size=8, lr=3e-3, optimizer="adamw"))
        assert update.result.flops > 0
        replies.append(Reply(nid, update.state, update.result.num_examples))
    before, _ = evaluate(fam.build(), data, token_ids)
    result = server.aggregate(plan, replies)
    loss, _ = evaluate(server.global_model(), data, token_ids)
    assert "lm_head.weight" not in server.state  # tied: stored and sent once
    assert np.isfinite(result.model_shift) and loss < before and np.exp(loss) < VOCAB


@pytest.mark.parametrize("preset", ["wikitext2-llama", "sst2-minilm"])
def test_presets_are_valid_settings(preset):
    import tomllib
    from pathlib import Path

    from msfusion_app.settings import Settings

    path = Path(__file__).resolve().parents[1] / "configs" / f"{preset}.toml"
    settings = Settings.from_mapping(tomllib.loads(path.read_text()))
    assert settings.model in ("llama", "minilm") and settings.optimizer == "adamw"
    shipped = Settings(**{k: getattr(settings, k) for k in ("model", "dataset", "optimizer")})  # msfusion's defaults
    assert all(getattr(settings, k) == getattr(shipped, k) for k in ("planner", "overlap_schedule", "overlap_start", "contrastive_mu"))
