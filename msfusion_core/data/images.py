"""Image data sets: scikit-learn's digits and CIFAR-10, decoded to tensors, partitioned by row.

* ``"digits"``: scikit-learn's 8x8 handwritten digits (ships inside the scikit-learn wheel, so it
  never needs the network). Turned into a Hugging Face ``DatasetDict`` with a fixed stratified
  80/20 train/test split.
* ``"cifar10"``: CIFAR-10 with the Hub schema of ``uoft-cs/cifar10`` (``img`` Image, ``label``
  ClassLabel), read from local Parquet files when ``data_path`` is given.

Decoded whole-split tensors and partition index lists are cached per process, so a simulation that
builds many clients in one process decodes each split once. ``datasets`` and ``flwr_datasets`` are
imported by the functions that load, so registering ``DIGITS`` and ``CIFAR10`` costs nothing.
"""

from __future__ import annotations

import io
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from msfusion_core.data.registry import DatasetSpec
from msfusion_core.data.tensors import TensorData
from msfusion_core.local.augment import Preprocess, as_float, cifar10_input

if TYPE_CHECKING:
    import datasets

_CIFAR10_HUB_ID = "uoft-cs/cifar10"
_IMAGE_COLUMN = {"digits": "image", "cifar10": "img"}
_DIGITS_TEST_SIZE = 0.2
_DIGITS_SPLIT_SEED = 0
_INDEX_COLUMN = "_row"
NUM_CLASSES = 10  # digits and CIFAR-10 alike


def _cifar_files(data_path: str | Path) -> dict[str, str]:
    """Return the train/test Parquet files under ``data_path``.

    ``data_path`` may be the folder holding ``train.parquet``/``test.parquet`` or a parent
    folder holding ``cifar10/`` (e.g. ``shared/data``), so both spellings users reach for work.
    """
    root = Path(data_path).expanduser().resolve()
    for folder in (root, root / "cifar10"):
        files = {split: folder / f"{split}.parquet" for split in ("train", "test")}
        if all(f.is_file() for f in files.values()):
            return {split: str(f) for split, f in files.items()}
    missing = [str(root / f"{split}.parquet") for split in ("train", "test")]
    raise FileNotFoundError(
        f"CIFAR-10 Parquet files not found under data_path {str(root)!r}: expected "
        f"{' and '.join(missing)} (or the same names inside {str(root / 'cifar10')!r})"
    )


def _data_key(name: str, data_path: str | Path | None) -> str | None:
    """Canonical cache key for where ``name`` comes from (``None``: built in / the Hub)."""
    if name == "digits" or data_path is None:
        return None
    return str(Path(_cifar_files(data_path)["train"]).parent)


def _digits_dataset_dict() -> datasets.DatasetDict:
    import datasets
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=_DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=_DIGITS_SPLIT_SEED,
    )
    features = datasets.Features(
        {
            "image": datasets.Array2D(shape=(8, 8), dtype="float32"),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    splits = {}
    # Sorted so that the split keeps the original sklearn order (stable, easy to inspect).
    for split, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        splits[split] = datasets.Dataset.from_dict(
            {"image": images[idx], "label": labels[idx]}, features=features, split=split
        )
    return datasets.DatasetDict(splits)


@cache
def _cached_dataset_dict(name: str, key: str | None) -> datasets.DatasetDict:
    import datasets

    if name == "digits":
        return _digits_dataset_dict()
    if key is None:
        # Hub path (needs network); kept for completeness, never used by the tests.
        dsd = datasets.load_dataset(_CIFAR10_HUB_ID)
    else:
        dsd = datasets.load_dataset("parquet", data_files=_cifar_files(key))
    assert isinstance(dsd, datasets.DatasetDict)
    return dsd


def load_dataset_dict(name: str, data_path: str | None = None) -> datasets.DatasetDict:
    """Load ``name`` as a ``DatasetDict`` with splits ``"train"`` and ``"test"``.

    ``data_path`` is ignored for ``"digits"``. For ``"cifar10"`` it names the folder with
    ``train.parquet``/``test.parquet`` (or its parent holding ``cifar10/``); without it the Hub id
    ``uoft-cs/cifar10`` is used. The result is cached per process: do not mutate it.
    """
    return _cached_dataset_dict(name, _data_key(name, data_path))


def _decode_png_bytes(blobs: list[bytes], height: int = 32, width: int = 32) -> np.ndarray:
    """Decode RGB images to a uint8 ``[N, H, W, 3]`` array.

    A plain Pillow loop writing into one preallocated buffer: ~85 us per 32x32 PNG on one core.
    Threads do not help (the GIL is held for most of the per-image work) and a batched numpy PNG
    unfilter was measured slower than this loop, so it stays simple.
    """
    from PIL import Image

    n = len(blobs)
    frame = height * width * 3
    buf = bytearray(n * frame)
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob)) as img:
            if img.mode != "RGB":
                img = img.convert("RGB")
            if img.size != (width, height):
                raise ValueError(f"image {i} has size {img.size}, expected {(width, height)}")
            buf[i * frame : (i + 1) * frame] = img.tobytes()
    return np.frombuffer(buf, dtype=np.uint8).reshape(n, height, width, 3)


def _decode(name: str, ds: datasets.Dataset, limit: int | None) -> TensorData:
    """Decode the first ``limit`` rows (all if ``None``) of a split to tensors."""
    stop = ds.num_rows if limit is None else min(limit, ds.num_rows)
    if name == "digits":
        rows = ds.with_format("numpy")[:stop]
        x = torch.from_numpy(np.ascontiguousarray(rows["image"], dtype=np.float32)).unsqueeze(1)
        y = torch.from_numpy(np.asarray(rows["label"], dtype=np.int64))
        return TensorData(x, y)
    # Arrow format returns the raw Image struct (bytes, path) without decoding through datasets.
    table = ds.with_format("arrow")[:stop]
    images = table.column(_IMAGE_COLUMN[name]).combine_chunks()
    blobs = images.field("bytes").to_pylist()
    if any(b is None for b in blobs):
        raise ValueError(f"{name}: some images have no embedded bytes (path-only rows)")
    hwc = _decode_png_bytes(blobs)
    x = torch.from_numpy(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return TensorData(x, y)


_LOCK = threading.RLock()
# (name, data key, split, limit) -> tensors; limit None means the whole split.
_TENSORS: dict[tuple[str, str | None, str, int | None], TensorData] = {}


def _split_tensors(name: str, data_path: str | None, split: str, limit: int | None = None) -> TensorData:
    """Cached decoded tensors of a split (the first ``limit`` rows when given).

    A prefix request is served from the whole split if that is already decoded; otherwise only
    the prefix is decoded, so a small evaluation set never pays for the whole split.
    """
    key = _data_key(name, data_path)
    with _LOCK:
        full = _TENSORS.get((name, key, split, None))
        if full is not None:
            return full if limit is None else TensorData(full.x[:limit], full.y[:limit])
        cache_key = (name, key, split, limit)
        if cache_key not in _TENSORS:
            ds = _cached_dataset_dict(name, key)[split]
            if limit is not None and limit >= ds.num_rows:
                cache_key = (name, key, split, None)
                limit = None
            if cache_key not in _TENSORS:
                _TENSORS[cache_key] = _decode(name, ds, limit)
        return _TENSORS[cache_key]


_PARTITIONS: dict[tuple[object, ...], tuple[np.ndarray, ...]] = {}
_ROWS: dict[tuple[object, ...], TensorData] = {}  # decoded train rows of one partition


def _partition_indices(
    name: str,
    data_path: str | None,
    partitioner: str,
    num_partitions: int,
    alpha: float,
    seed: int,
) -> tuple[np.ndarray, ...]:
    """Row indices (into the train split) of every partition, cached per argument set.

    The partitioner sees a label-only copy of the train split with a row-index column, so no
    image is decoded to partition and the indices can be read back from any partition it returns.
    """
    from msfusion_core.data.base import make_partitioner

    key = (name, _data_key(name, data_path), partitioner, num_partitions, float(alpha), seed)
    with _LOCK:
        cached = _PARTITIONS.get(key)
        if cached is not None:
            return cached
        part = make_partitioner(partitioner, num_partitions, alpha=alpha, seed=seed)
        train = _cached_dataset_dict(name, key[1])["train"]
        labels_only = train.select_columns(["label"]).add_column(
            _INDEX_COLUMN, np.arange(train.num_rows, dtype=np.int64)
        )
        part.dataset = labels_only
        out = tuple(
            np.asarray(
                part.load_partition(pid).with_format("numpy", columns=[_INDEX_COLUMN])[:][
                    _INDEX_COLUMN
                ],
                dtype=np.int64,
            )
            for pid in range(num_partitions)
        )
        _PARTITIONS[key] = out
        return out


def _partition(
    name: str, data_path: str | None, partitioner: str, num_partitions: int, partition_id: int, alpha: float, seed: int
) -> TensorData:
    """Rows of partition ``partition_id`` of the train split."""
    from msfusion_core.data.base import make_partitioner

    make_partitioner(partitioner, num_partitions, alpha=alpha, seed=seed)  # validate early
    try:
        indices = _partition_indices(name, data_path, partitioner, num_partitions, alpha, seed)
    except ValueError as exc:
        if partitioner != "dirichlet":
            raise
        # flwr-datasets retries a Dirichlet draw until every partition is large enough; with many
        # partitions of a small data set it gives up with a message that names neither.
        raise ValueError(
            f"a Dirichlet(alpha={alpha}) split of {name} into {num_partitions} partitions failed ({exc}); "
            "use fewer partitions, a larger dirichlet-alpha, or partitioner 'iid'"
        ) from exc
    return _train_rows(name, data_path, indices[int(partition_id)])


def _train_rows(name: str, data_path: str | None, rows: np.ndarray) -> TensorData:
    """Rows of the train split: indexed from the whole decoded split when this process has it (a
    simulation serving many nodes), otherwise decoded alone (a node serving one partition decodes
    its 1/N of the images, not all of them) and cached per process."""
    key = _data_key(name, data_path)
    idx = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    with _LOCK:
        full = _TENSORS.get((name, key, "train", None))
        if full is None:
            rows_key = (name, key, "train", hash(rows.tobytes()), len(rows))
            if rows_key not in _ROWS:
                _ROWS[rows_key] = _decode(name, _cached_dataset_dict(name, key)["train"].select(rows), None)
            return _ROWS[rows_key]
    return TensorData(full.x.index_select(0, idx), full.y.index_select(0, idx))


def _image_spec(name: str, preprocess: Preprocess) -> DatasetSpec:
    def partition(data_path, partitioner, num_partitions, partition_id, alpha, seed, seq_len, tokenizer) -> TensorData:
        return _partition(name, data_path, partitioner, num_partitions, partition_id, alpha, seed)

    def test(data_path, limit, split, seq_len, tokenizer) -> TensorData:
        if split not in (None, "test"):
            raise ValueError(f"{name} has only a test split for evaluation, not {split!r}")
        return _split_tensors(name, data_path, "test", limit)

    return DatasetSpec(name, ("iid", "dirichlet"), preprocess, lambda data_path, tokenizer: NUM_CLASSES, partition, test)


DIGITS = _image_spec("digits", as_float)  # 8x8 images too small for crops
CIFAR10 = _image_spec("cifar10", cifar10_input)
