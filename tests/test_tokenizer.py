"""WikiText-2's byte-level BPE (issue 16): trained on the train split only, deterministic, cached by
content hash, round-trips text; the data pipeline's batches."""

from pathlib import Path

import pytest
import torch

from msfusion_app.settings import Settings
from msfusion_core.data import load_partition, load_test, num_classes
from msfusion_core.data import text

SHARED_WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2"


def small_corpus(folder: Path, train_lines: int = 1500) -> Path:
    """The first lines of the real WikiText-2 splits: a corpus a BPE of a few hundred tokens fits."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.txt", train_lines), ("valid.txt", 200), ("test.txt", 200)):
        with open(SHARED_WIKITEXT / name, encoding="utf-8") as f:
            (folder / name).write_text("".join(next(f) for _ in range(count)), encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def fresh_caches():
    text._CACHE.clear()  # the per-process cache would hide a second training or a second load
    yield
    text._CACHE.clear()


def test_bpe_training_is_deterministic_and_its_cache_is_reused(tmp_path, monkeypatch):
    a, b = small_corpus(tmp_path / "a"), small_corpus(tmp_path / "b")
    tok_a, tok_b = text.bpe_tokenizer(str(a), 400), text.bpe_tokenizer(str(b), 400)
    assert tok_a.get_vocab_size() == 400
    (cached,) = (a / ".tokenizers").glob("bpe-400-*.json")
    assert cached.read_text() == next((b / ".tokenizers").glob("bpe-400-*.json")).read_text()  # trained twice, same
    assert tok_a.get_vocab() == tok_b.get_vocab()
    # A fresh process loads the cached file: it does not train again.
    import tokenizers

    def no_training(*_args, **_kwargs):
        raise AssertionError("trained again although the cache holds this tokenizer")

    with monkeypatch.context() as patch:
        patch.setattr(tokenizers.Tokenizer, "train_from_iterator", no_training)
        text._CACHE.clear()
        assert text.bpe_tokenizer(str(a), 400).get_vocab() == tok_a.get_vocab()
        # Another train split (content hash) is another tokenizer: this one must be trained.
        (a / "train.txt").write_text((a / "train.txt").read_text()[:20_000])
        text._CACHE.clear()
        with pytest.raises(AssertionError, match="trained again"):
            text.bpe_tokenizer(str(a), 400)
    text._CACHE.clear()
    text.bpe_tokenizer(str(a), 400)
    assert len(list((a / ".tokenizers").glob("bpe-400-*.json"))) == 2


def test_bpe_round_trips_text_and_ends_every_line_with_eos(tmp_path):
    folder = small_corpus(tmp_path)
    tok = text.bpe_tokenizer(str(folder), 400)
    lines = text.wikitext_lines(str(folder))["test"]["text"][:50]
    for line in lines:
        assert tok.decode(tok.encode(line).ids) == line
    ids = text.encode_lines(lines, str(folder), "bpe-400")
    eos = tok.token_to_id("<eos>")
    assert int((ids == eos).sum()) == len(lines) and int(ids[-1]) == eos
    assert int(ids.max()) < 400
    # Fewer tokens per line than characters: merges were learnt.
    assert ids.numel() < 0.75 * sum(len(line) for line in lines)


def test_the_data_pipeline_batches_bpe_sequences(tmp_path):
    folder = str(small_corpus(tmp_path))
    assert num_classes("wikitext2", folder, "bpe-400") == 400
    part = load_partition("wikitext2", folder, "articles", 2, 0, seq_len=16, tokenizer="bpe-400")
    test = load_test("wikitext2", folder, seq_len=16, tokenizer="bpe-400")
    for data in (part, test):
        assert data.x.shape[1] == 16 and data.x.shape == data.y.shape and data.x.dtype == torch.int64
        assert torch.equal(data.x[:, 1:], data.y[:, :-1])  # y is x shifted by one token
    words = load_test("wikitext2", folder, seq_len=16)  # the word-level vocabulary stays an option
    assert int(words.x.max()) >= 400 or num_classes("wikitext2", folder) != 400
    with pytest.raises(ValueError, match="tokenizer must be 'word' or 'bpe-<vocabulary size >= 260>'"):
        Settings.from_mapping({"dataset": "wikitext2", "model": "llama", "partitioner": "iid", "tokenizer": "bpe8k"})
    with pytest.raises(ValueError, match="tokenizer 'bpe-4096' is for dataset wikitext2; dataset 'digits' takes only 'word'"):
        Settings.from_mapping({"tokenizer": "bpe-4096"})
