"""Tests for msfusion_core.data and msfusion_core.local.augment (offline only: nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msfusion_core import data
from msfusion_core.data import images
from msfusion_core.local import augment

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAVE_CIFAR = (SHARED_DATA / "cifar10" / "train.parquet").is_file() and (
    SHARED_DATA / "cifar10" / "test.parquet"
).is_file()
needs_cifar = pytest.mark.skipif(not HAVE_CIFAR, reason=f"no local CIFAR-10 Parquet under {SHARED_DATA}")

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any accidental Hub access fail fast instead of downloading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


# ------------------------------------------------------------------------------------------
# partitioners on a small in-memory data set
# ------------------------------------------------------------------------------------------


def _small_dataset(n: int = 600, classes: int = 6) -> datasets.Dataset:
    rng = np.random.default_rng(123)
    features = datasets.Features(
        {"id": datasets.Value("int64"), "label": datasets.ClassLabel(num_classes=classes)}
    )
    return datasets.Dataset.from_dict(
        {"id": np.arange(n), "label": rng.permutation(np.arange(n) % classes)}, features=features
    )


def _partition_ids(kind: str, num_partitions: int, seed: int, alpha: float = 0.5) -> list[list[int]]:
    part = data.make_partitioner(kind, num_partitions, alpha=alpha, seed=seed)
    part.dataset = _small_dataset()
    return [list(part.load_partition(pid)["id"]) for pid in range(num_partitions)]


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_partitions_cover_exactly_and_are_reproducible(kind: str) -> None:
    parts = _partition_ids(kind, 5, seed=7)
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == 600  # disjoint
    assert set(flat) == set(range(600))  # union is everything
    assert all(len(p) > 0 for p in parts)
    assert _partition_ids(kind, 5, seed=7) == parts  # same seed, same partitions
    other = _partition_ids(kind, 5, seed=8)
    assert [sorted(p) for p in other] != [sorted(p) for p in parts]  # another seed differs


def test_iid_is_balanced_and_dirichlet_is_label_skewed() -> None:
    iid = _partition_ids("iid", 5, seed=0)
    assert {len(p) for p in iid} == {120}
    labels = np.asarray(_small_dataset()["label"])

    def mean_tv_from_uniform(parts: list[list[int]]) -> float:
        """Mean total-variation distance of each partition's label histogram from uniform."""
        return float(
            np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=6) / len(p) - 1 / 6).sum() for p in parts])
        )

    # Measured: iid ~0.06-0.10, dirichlet alpha=0.1 ~0.45-0.66 over seeds 0-5.
    assert mean_tv_from_uniform(iid) < 0.15
    assert mean_tv_from_uniform(_partition_ids("dirichlet", 5, seed=0, alpha=0.1)) > 0.3


def test_make_partitioner_types() -> None:
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    assert isinstance(data.make_partitioner("iid", 3), IidPartitioner)
    assert isinstance(data.make_partitioner("dirichlet", 3, alpha=1.0, seed=1), DirichletPartitioner)


# ------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------


def _rows_sorted(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Rows (image pixels + label) in a canonical order, for multiset comparison."""
    rows = np.concatenate([x.reshape(len(x), -1).numpy().astype(np.float64), y.numpy()[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_dataset_dict() -> None:
    dsd = images.load_dataset_dict("digits")
    assert set(dsd) == {"train", "test"}
    assert dsd["train"].num_rows + dsd["test"].num_rows == 1797
    assert dsd["test"].num_rows == 360
    assert dsd["train"].features["label"].names == [str(i) for i in range(10)]
    # stratified: every class is in both splits in about the same proportion
    for split in ("train", "test"):
        counts = np.bincount(np.asarray(dsd[split]["label"]), minlength=10)
        assert counts.min() > 0 and counts.max() / counts.min() < 1.2
    assert data.num_classes("digits") == 10


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_digits_partitions_cover_train_split(kind: str) -> None:
    k = 4
    parts = [data.load_partition("digits", None, kind, k, pid, alpha=0.5, seed=3) for pid in range(k)]
    for p in parts:
        assert p.x.dtype == torch.float32 and p.x.shape[1:] == (1, 8, 8)
        assert p.y.dtype == torch.int64 and p.y.shape == (p.x.shape[0],)
        assert 0.0 <= float(p.x.min()) and float(p.x.max()) <= 1.0
        assert int(p.y.min()) >= 0 and int(p.y.max()) < 10
    train = images.load_dataset_dict("digits")["train"].with_format("numpy")[:]
    x_all = torch.from_numpy(train["image"]).unsqueeze(1)
    y_all = torch.from_numpy(train["label"])
    x_cat = torch.cat([p.x for p in parts])
    y_cat = torch.cat([p.y for p in parts])
    assert len(y_cat) == len(y_all) == 1437
    np.testing.assert_array_equal(_rows_sorted(x_cat, y_cat), _rows_sorted(x_all, y_all))


def test_digits_partition_cached_and_copied() -> None:
    a = data.load_partition("digits", None, "dirichlet", 3, 1, alpha=0.5, seed=5)
    a.x.zero_()  # mutating a result must not corrupt the per-process cache
    b = data.load_partition("digits", None, "dirichlet", 3, 1, alpha=0.5, seed=5)
    assert float(b.x.sum()) > 0
    c = data.load_partition("digits", None, "dirichlet", 3, 1, alpha=0.5, seed=5)
    assert torch.equal(b.x, c.x) and torch.equal(b.y, c.y)


def test_digits_load_test() -> None:
    test = data.load_test("digits")
    assert test.x.shape == (360, 1, 8, 8) and test.x.dtype == torch.float32
    assert test.y.shape == (360,) and test.y.dtype == torch.int64
    head = data.load_test("digits", limit=25)
    assert head.x.shape == (25, 1, 8, 8)
    assert torch.equal(head.x, test.x[:25]) and torch.equal(head.y, test.y[:25])


# ------------------------------------------------------------------------------------------
# CIFAR-10 from local Parquet (never the Hub)
# ------------------------------------------------------------------------------------------


@needs_cifar
def test_cifar_local_parquet_labels() -> None:
    for path in (str(SHARED_DATA), str(SHARED_DATA / "cifar10")):
        assert images.load_dataset_dict("cifar10", path)["train"].features["label"].names == CIFAR_NAMES
    dsd = images.load_dataset_dict("cifar10", str(SHARED_DATA / "cifar10"))
    assert dsd["train"].num_rows == 50_000 and dsd["test"].num_rows == 10_000
    assert data.num_classes("cifar10") == 10
    # decodes only the first 10 test images
    head = data.load_test("cifar10", str(SHARED_DATA), limit=10)
    assert head.y.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert head.x.shape == (10, 3, 32, 32) and head.x.dtype == torch.uint8
    assert head.y.dtype == torch.int64
    # pixels agree with the datasets library's own Image decoding
    ref = np.asarray(dsd["test"][0]["img"].convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(head.x[0].numpy(), ref)


def test_cifar_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        images.load_dataset_dict("cifar10", str(tmp_path))


@needs_cifar
@pytest.mark.skipif(
    os.environ.get("MSFUSION_SLOW_TESTS") != "1",
    reason="decodes all 50k CIFAR train images (~5 s); set MSFUSION_SLOW_TESTS=1",
)
def test_cifar_partition_slow() -> None:
    p = data.load_partition("cifar10", str(SHARED_DATA), "dirichlet", 10, 2, alpha=0.5, seed=1)
    assert p.x.dtype == torch.uint8 and p.x.shape[1:] == (3, 32, 32) and p.y.dtype == torch.int64
    sizes = [
        len(data.load_partition("cifar10", str(SHARED_DATA), "dirichlet", 10, i, alpha=0.5, seed=1).y)
        for i in range(10)
    ]
    assert sum(sizes) == 50_000


# ------------------------------------------------------------------------------------------
# augmentation
# ------------------------------------------------------------------------------------------


def _reference_crop_flip(x: torch.Tensor, pad: int, seed: int) -> torch.Tensor:
    """Per-sample loop drawing the same random numbers in the same order as random_crop_flip."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flip = torch.randint(0, 2, (b,), generator=g).bool()
    out = []
    for i in range(b):
        crop = F.pad(x[i], (pad, pad, pad, pad))[:, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


def test_random_crop_flip_matches_reference_loop() -> None:
    x = torch.rand(9, 3, 7, 5)
    for pad in (0, 1, 3):
        got = augment.random_crop_flip(x, pad=pad, generator=torch.Generator().manual_seed(11))
        assert got.shape == x.shape
        assert torch.equal(got, _reference_crop_flip(x, pad, seed=11))


def test_random_crop_flip_deterministic_and_varied() -> None:
    x = torch.rand(16, 3, 32, 32)
    a = augment.random_crop_flip(x, generator=torch.Generator().manual_seed(0))
    b = augment.random_crop_flip(x, generator=torch.Generator().manual_seed(0))
    c = augment.random_crop_flip(x, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_random_crop_flip_pad0_is_identity_or_flip() -> None:
    x = torch.rand(32, 3, 6, 6)
    out = augment.random_crop_flip(x, pad=0, generator=torch.Generator().manual_seed(2))
    same = [torch.equal(out[i], x[i]) for i in range(32)]
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(32)]
    assert all(s or f for s, f in zip(same, flipped))
    assert any(same) and any(flipped)  # both branches exercised with this seed


def test_preprocess_callables() -> None:
    mean_px = torch.tensor([round(m * 255) for m in augment.CIFAR10_MEAN], dtype=torch.uint8)
    x = mean_px.view(1, 3, 1, 1).expand(4, 3, 32, 32).contiguous()
    out = augment.cifar10_input(x, False)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.mean(dim=(0, 2, 3)).abs().max() < 0.01
    rnd = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    tr = augment.cifar10_input(rnd, True, torch.Generator().manual_seed(0))
    ev = augment.cifar10_input(rnd, False)
    assert tr.shape == ev.shape == rnd.shape and not torch.equal(tr, ev)
    digits = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    d = data.get_dataset("digits").preprocess(digits, True, None)
    assert d.dtype == torch.float32 and torch.allclose(d, digits.float())


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def test_unknown_dataset() -> None:
    for call in (
        lambda: data.get_dataset("mnist"),
        lambda: data.load_test("mnist"),
        lambda: data.num_classes("mnist"),
        lambda: data.load_partition("mnist", None, "iid", 2, 0),
    ):
        with pytest.raises(ValueError, match="unknown dataset 'mnist'; known datasets: digits, cifar10, wikitext2, sst2"):
            call()


def test_bad_partition_arguments() -> None:
    with pytest.raises(ValueError, match="unknown partitioner 'shards'"):
        data.make_partitioner("shards", 4)
    with pytest.raises(ValueError, match="partitioner must be one of iid, dirichlet for dataset 'digits'; got 'shards'"):
        data.load_partition("digits", None, "shards", 4, 0)
    with pytest.raises(ValueError, match="partitioner must be one of iid, articles for dataset 'wikitext2'; got 'dirichlet'"):
        data.load_partition("wikitext2", None, "dirichlet", 4, 0)  # refused before any text is read
    for pid in (-1, 4, 100):
        with pytest.raises(ValueError, match="partition_id"):
            data.load_partition("digits", None, "dirichlet", 4, pid)
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            data.make_partitioner("dirichlet", 4, alpha=alpha)
        with pytest.raises(ValueError, match="alpha"):
            data.load_partition("digits", None, "dirichlet", 4, 0, alpha=alpha)
    with pytest.raises(ValueError, match="num_partitions"):
        data.make_partitioner("iid", 0)
    for not_an_int in (2.0, "2", True):
        with pytest.raises(TypeError, match="num_partitions must be an int"):
            data.make_partitioner("iid", not_an_int)
        with pytest.raises(TypeError, match="partition_id must be an int"):
            data.load_partition("digits", None, "iid", 4, not_an_int)
    with pytest.raises(ValueError, match="limit"):
        data.load_test("digits", limit=-1)
    with pytest.raises(ValueError, match="pad"):
        augment.random_crop_flip(torch.zeros(1, 1, 4, 4), pad=-1)
