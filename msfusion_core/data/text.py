"""Text data: WikiText-2 word-level language modelling and SST-2 sentiment, as ``TensorData``.

WikiText-2 is tokenised one of two ways (run config ``tokenizer``):

* ``word``, as pytorch/examples' ``word_language_model``: every line is ``line.split()`` plus
  ``<eos>``; the vocabulary is built from the training split in order of first appearance (words
  absent from it read as ``<unk>``). 33,278 words: a tied embedding that dwarfs a small LM's blocks.
* ``bpe-<V>``: a byte-level BPE of vocabulary V (Hugging Face ``tokenizers``) trained on the train
  split only, each line encoded then ``<eos>``. Trained once per content hash of train.txt and kept
  as JSON in a ``.tokenizers`` folder next to the data (or ``~/.cache/msfusion`` where that is
  read-only); never downloaded.

A node's text becomes non-overlapping sequences of ``seq_len``
tokens: ``x`` = tokens [i·T, (i+1)·T), ``y`` = the same shifted by one. Partitions (flwr-datasets):
``iid`` gives each node a contiguous chunk of the training text (``IidPartitioner`` over lines),
``articles`` whole articles (``GroupedNaturalIdPartitioner`` over article ids).

SST-2 is tokenised with the MiniLM checkpoint's tokenizer (padded to ``seq_len`` with id 0) and
split with the Dirichlet label partitioner, like the image data sets.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from functools import lru_cache
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import torch

from msfusion_core.atomic import atomic_write
from msfusion_core.data.registry import DatasetSpec
from msfusion_core.data.tensors import TensorData, check_tokenizer
from msfusion_core.local.augment import token_ids, trim_padding

if TYPE_CHECKING:
    import datasets

EOS, UNK = "<eos>", "<unk>"
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")
SST2_HUB = "stanfordnlp/sst2"
WIKITEXT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
_ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")  # " = Title = ", not " = = Section = = "

_LOCK = threading.RLock()
_CACHE: dict[tuple, object] = {}


def _cached(key: tuple, make):
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = make()
        return _CACHE[key]


def _folder(data_path: str | None, name: str) -> Path | None:
    """``data_path`` may be the data set's folder or its parent (``../shared/data``)."""
    if not data_path:
        return None
    path = Path(data_path).expanduser().resolve()
    if (path / name).is_dir():
        path = path / name
    if not path.is_dir():
        raise ValueError(f"data path {str(path)!r} is not a directory")
    return path


# -- WikiText-2 ------------------------------------------------------------------------------
def wikitext_lines(data_path: str | None) -> datasets.DatasetDict:
    """Splits train/validation/test, one row per line (column ``text``)."""
    import datasets  # here, not at the top: a node that only needs the tokenizer's vocabulary never loads it

    folder = _folder(data_path, "wikitext2")

    def load() -> datasets.DatasetDict:
        if folder is None:  # the Hub (needs the network); raw text, so the vocabulary is larger
            return datasets.load_dataset(*WIKITEXT_HUB)
        missing = [f for f in WIKITEXT_FILES.values() if not (folder / f).is_file()]
        if missing:
            raise ValueError(f"{folder} lacks {', '.join(missing)} (expected WikiText-2's train/valid/test .txt)")
        files = {split: str(folder / f) for split, f in WIKITEXT_FILES.items()}
        return datasets.load_dataset("text", data_files=files, keep_linebreaks=False)

    return _cached(("wikitext-lines", str(folder)), load)


def build_vocab(lines: list[str]) -> dict[str, int]:
    """Word → id in order of first appearance, ``<eos>`` included (pytorch/examples' Dictionary)."""
    vocab: dict[str, int] = {}
    for line in lines:
        for word in line.split() + [EOS]:
            vocab.setdefault(word, len(vocab))
    vocab.setdefault(UNK, len(vocab))
    return vocab


def tokenize(lines: list[str], vocab: dict[str, int]) -> torch.Tensor:
    """int64 ids of ``line.split() + ['<eos>']`` for every line, concatenated."""
    unk = vocab[UNK]
    ids = [vocab.get(w, unk) for line in lines for w in line.split() + [EOS]]
    return torch.tensor(ids, dtype=torch.int64)


def wikitext_vocab(data_path: str | None) -> dict[str, int]:
    return _cached(("wikitext-vocab", str(_folder(data_path, "wikitext2"))), lambda: build_vocab(wikitext_lines(data_path)["train"]["text"]))


def _bpe_cache_dir(folder: Path | None) -> Path:
    for candidate in ([folder / ".tokenizers"] if folder is not None else []) + [Path.home() / ".cache" / "msfusion" / "tokenizers"]:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    raise OSError("no writable folder for the BPE tokenizer cache")


def bpe_tokenizer(data_path: str | None, vocab_size: int):
    """A byte-level BPE trained on WikiText-2's train split, loaded from the cache when its
    content hash (of train.txt and the vocabulary size) has been trained before."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = _folder(data_path, "wikitext2")
    if folder is None:
        raise ValueError("the BPE tokenizer is trained on local WikiText-2 files: give data-path")

    def load():
        digest = hashlib.sha256((folder / WIKITEXT_FILES["train"]).read_bytes()).hexdigest()[:16]
        cache = _bpe_cache_dir(folder) / f"bpe-{vocab_size}-{digest}.json"
        if cache.is_file():
            return Tokenizer.from_file(str(cache))
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train_from_iterator(wikitext_lines(data_path)["train"]["text"], trainer=trainer)
        atomic_write(cache, lambda tmp: tok.save(str(tmp)))  # concurrent nodes never read a half-written file
        return tok

    return _cached(("wikitext-bpe", str(folder), vocab_size), load)


def encode_lines(lines: list[str], data_path: str | None, tokenizer: str = "word") -> torch.Tensor:
    """int64 ids of every line, each followed by ``<eos>``, concatenated."""
    vocab_size = check_tokenizer(tokenizer)
    if vocab_size is None:
        return tokenize(lines, wikitext_vocab(data_path))
    tok = bpe_tokenizer(data_path, vocab_size)
    eos = tok.token_to_id(EOS)
    ids = [i for enc in tok.encode_batch(lines) for i in (*enc.ids, eos)]
    return torch.tensor(ids, dtype=torch.int64)


def wikitext_vocab_size(data_path: str | None, tokenizer: str = "word") -> int:
    vocab_size = check_tokenizer(tokenizer)
    return len(wikitext_vocab(data_path)) if vocab_size is None else bpe_tokenizer(data_path, vocab_size).get_vocab_size()


def lm_sequences(tokens: torch.Tensor, seq_len: int) -> TensorData:
    """Non-overlapping next-token pairs: x [N, T] and y [N, T] with N = (len(tokens) − 1) // T."""
    if seq_len < 1:
        raise ValueError(f"sequence length must be >= 1, got {seq_len}")
    n = (int(tokens.numel()) - 1) // seq_len
    x = tokens[: n * seq_len].view(n, seq_len)
    y = tokens[1 : n * seq_len + 1].view(n, seq_len)
    return TensorData(x.clone(), y.clone())


def article_ids(lines: list[str]) -> np.ndarray:
    """Article index of every line: an article starts at each top-level title line."""
    starts = np.fromiter((bool(_ARTICLE_TITLE.match(line)) for line in lines), dtype=bool, count=len(lines))
    return np.maximum(np.cumsum(starts) - 1, 0)


def wikitext_partition(
    data_path: str | None, partitioner: str, num_partitions: int, partition_id: int, seq_len: int, tokenizer: str = "word"
) -> TensorData:
    train = wikitext_lines(data_path)["train"]

    def rows() -> list[np.ndarray]:
        from flwr_datasets.partitioner import GroupedNaturalIdPartitioner, IidPartitioner

        indexed = train.add_column("_row", np.arange(train.num_rows, dtype=np.int64))
        if partitioner == "iid":
            part = IidPartitioner(num_partitions)  # contiguous shards of the text
        else:
            indexed = indexed.add_column("article", article_ids(train["text"]))
            num_articles = len(indexed.unique("article"))
            if num_articles < num_partitions:
                raise ValueError(f"{num_articles} articles cannot be spread over {num_partitions} partitions")
            part = GroupedNaturalIdPartitioner("article", num_articles // num_partitions, mode="allow-bigger", sort_unique_ids=True)
        part.dataset = indexed
        return [np.asarray(part.load_partition(p)["_row"]) for p in range(num_partitions)]

    key = ("wikitext-partitions", str(_folder(data_path, "wikitext2")), partitioner, num_partitions)

    def sequences() -> TensorData:  # tokenised once per process, not every round
        lines = train.select(_cached(key, rows)[partition_id])["text"]
        return lm_sequences(encode_lines(lines, data_path, tokenizer), seq_len)

    return _cached((*key, partition_id, seq_len, tokenizer), sequences)


def wikitext_split(data_path: str | None, split: str, seq_len: int, tokenizer: str = "word") -> TensorData:
    def sequences() -> TensorData:
        return lm_sequences(encode_lines(wikitext_lines(data_path)[split]["text"], data_path, tokenizer), seq_len)

    return _cached(("wikitext-split", str(_folder(data_path, "wikitext2")), split, seq_len, tokenizer), sequences)


# -- SST-2 -----------------------------------------------------------------------------------
def sst2_splits(data_path: str | None) -> datasets.DatasetDict:
    """Splits train/validation(/test), columns ``text`` and ``label``."""
    import datasets

    folder = _folder(data_path, "sst2")

    def load() -> datasets.DatasetDict:
        if folder is None:
            return datasets.load_dataset(SST2_HUB).rename_column("sentence", "text")
        files = {s: str(folder / f"{s}.parquet") for s in ("train", "validation", "test") if (folder / f"{s}.parquet").is_file()}
        if "train" not in files or "validation" not in files:
            raise ValueError(f"{folder} lacks train.parquet or validation.parquet (SST-2: text, label)")
        return datasets.load_dataset("parquet", data_files=files)

    return _cached(("sst2", str(folder)), load)


@lru_cache(maxsize=1)
def _minilm_tokenizer():
    from transformers import BertTokenizerFast

    from msfusion_core.models.minilm import minilm_path

    return BertTokenizerFast.from_pretrained(minilm_path())


def encode_sentences(ds: datasets.Dataset, seq_len: int) -> TensorData:
    """Token ids [N, seq_len] (0 = padding, truncated to seq_len) and labels [N]."""
    enc = _minilm_tokenizer()(list(ds["text"]), truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt")
    return TensorData(enc["input_ids"].to(torch.int64), torch.tensor(list(ds["label"]), dtype=torch.int64))


def sst2_tensors(data_path: str | None, split: str, seq_len: int) -> TensorData:
    """A whole split, tokenised (cached)."""
    key = ("sst2-tensors", str(_folder(data_path, "sst2")), split, seq_len)
    return _cached(key, lambda: encode_sentences(sst2_splits(data_path)[split], seq_len))


def sst2_partition(
    data_path: str | None,
    partitioner: str,
    num_partitions: int,
    partition_id: int,
    alpha: float,
    seed: int,
    seq_len: int,
) -> TensorData:
    """One node's sentences; only they are tokenised (a node never pays for the whole split)."""
    train = sst2_splits(data_path)["train"]

    def rows() -> list[np.ndarray]:
        from msfusion_core.data.base import make_partitioner

        part = make_partitioner(partitioner, num_partitions, alpha=alpha, seed=seed)
        part.dataset = train.select_columns(["label"]).add_column("_row", np.arange(train.num_rows, dtype=np.int64))
        return [np.asarray(part.load_partition(p)["_row"]) for p in range(num_partitions)]

    key = ("sst2-partitions", str(_folder(data_path, "sst2")), partitioner, num_partitions, float(alpha), seed)

    def sentences() -> TensorData:  # tokenised once per process, not every round
        return encode_sentences(train.select(_cached(key, rows)[partition_id]), seq_len)

    return _cached((*key, partition_id, seq_len), sentences)


# -- the specs ---------------------------------------------------------------------------------
WIKITEXT2 = DatasetSpec(
    "wikitext2",
    ("iid", "articles"),
    token_ids,
    num_classes=wikitext_vocab_size,
    partition=lambda path, partitioner, n, pid, alpha, seed, seq_len, tok: wikitext_partition(path, partitioner, n, pid, seq_len, tok),
    test=lambda path, limit, split, seq_len, tok: wikitext_split(path, split or "test", seq_len, tok),
    language_model=True,
    takes_tokenizer=True,
)
SST2 = DatasetSpec(
    "sst2",
    ("iid", "dirichlet"),
    trim_padding,
    num_classes=lambda path, tok: 2,
    partition=lambda path, partitioner, n, pid, alpha, seed, seq_len, tok: sst2_partition(path, partitioner, n, pid, alpha, seed, seq_len),
    test=lambda path, limit, split, seq_len, tok: sst2_tensors(path, split or "validation", seq_len),  # GLUE reports validation accuracy
)
