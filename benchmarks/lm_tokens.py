"""An LM experiment's data and model, measured: tokens per split and the unigram perplexity of the
test split under each tokenizer, and the split blocks' share of the parameters and the FLOPs per
token of the experiment's model.

    python -m benchmarks.lm_tokens [LM2 | LM2v1]

Writes ``docs/results/<experiment>/tokens.json`` (which ``benchmarks.run`` reads into the summary)
and prints a table. The unigram model is the train split's token frequencies with add-one
smoothing; its test perplexity is the bar an LM must clear by far (issue 16: end at or below a
third of it). The experiment's model is stored under ``model`` (the key ``benchmarks.run`` reads), LM's word-level
one under ``word_model``, for comparison.
"""

from __future__ import annotations

import json
import math

import torch

from benchmarks.experiments import EXPERIMENTS, METHODS
from msfusion.loopback import REPO
from msfusion_app.settings import Settings
from msfusion_core.data.text import encode_lines, wikitext_lines, wikitext_vocab_size
from msfusion_core.local.measure import count_flops, num_parameters
from msfusion_core.method.split_map import normalize_split_map

TOKENIZERS = ("word", "bpe-8192", "bpe-4096", "bpe-2048")


def unigram_perplexity(train: torch.Tensor, test: torch.Tensor, vocab: int) -> float:
    counts = torch.bincount(train, minlength=vocab).double() + 1.0  # add-one: no test token has p = 0
    log_p = (counts / counts.sum()).log()
    return math.exp(-float(log_p[test].mean()))


def tokens(data_path: str, tokenizer: str) -> dict[str, float]:
    splits = wikitext_lines(data_path)
    ids = {s: encode_lines(splits[s]["text"], data_path, tokenizer) for s in ("train", "validation", "test")}
    vocab = wikitext_vocab_size(data_path, tokenizer)
    return {
        "vocab": vocab,
        **{f"tokens_{s}": int(t.numel()) for s, t in ids.items()},
        "unigram_test_perplexity": unigram_perplexity(ids["train"], ids["test"], vocab),
    }


def model_shares(settings: Settings) -> dict[str, float]:
    """The split blocks' share of the parameters (tied embedding counted once) and FLOPs per token."""
    family = settings.family()
    torch.manual_seed(0)
    model = family.build()
    split = set(normalize_split_map(family.split_map))
    params = dict(model.named_parameters())  # tied tensors appear once
    blocks = sum(p.numel() for k, p in params.items() if k in split)
    x = torch.zeros(1, settings.seq_len, dtype=torch.int64)
    train_flops = count_flops(lambda: model(x).logits.sum().backward())  # one forward + backward
    return {
        "parameters": num_parameters(model),
        "blocks_param_fraction": blocks / num_parameters(model),
        "train_flops_per_token": train_flops / settings.seq_len,
    }


def main(experiment: str = "LM2") -> None:
    setting = EXPERIMENTS[experiment].setting
    path = setting["data-path"]
    rows = {tok: tokens(path, tok) for tok in TOKENIZERS}
    settings = Settings.from_mapping(setting | METHODS["full"])  # the full-width model the methods share
    out = {"setting": {k: setting[k] for k in ("tokenizer", "model-width", "model-layers", "seq-len")}, "tokenizers": rows}
    out["model"] = model_shares(settings)
    out["word_model"] = model_shares(Settings.from_mapping(EXPERIMENTS["LM"].setting | METHODS["full"]))
    folder = REPO / "docs" / "results" / experiment
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokens.json").write_text(json.dumps(out, indent=2))
    print("| tokenizer | vocabulary | train tokens | valid tokens | test tokens | unigram test ppl |")
    print("|---|---|---|---|---|---|")
    for tok, r in rows.items():
        print(f"| {tok} | {r['vocab']:,} | {r['tokens_train']:,} | {r['tokens_validation']:,} | {r['tokens_test']:,} | {r['unigram_test_perplexity']:.0f} |")
    for name in ("model", "word_model"):
        m = out[name]
        print(f"{name}: {m['parameters']:,} parameters, blocks {m['blocks_param_fraction']:.1%}, {m['train_flops_per_token'] / 1e6:.1f} MFLOPs/token (train)")


if __name__ == "__main__":
    import sys

    main(*sys.argv[1:2])
