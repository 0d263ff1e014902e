"""Fashion-MNIST: the IDX reader and the official split, on a tiny IDX tree the tests write."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from edgeqat.data import ClassificationDataModule, DataSourceError, load_source
from edgeqat.data.idx import IdxError, read_idx, write_idx
from edgeqat.data.sources import FASHION_MNIST_ROOT

N_TRAIN, N_TEST = 200, 50  # 20 and 5 per class


def _write_tree(root: Path, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A Fashion-MNIST-shaped tree: class ``c``'s images are filled with ``10 * c + (i % 7)``."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = (10 * labels[:, None, None] + (np.arange(n) % 7)[:, None, None]) * np.ones((1, 28, 28), np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images.astype(np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return arrays["train"], arrays["t10k"]


def test_idx_round_trip_and_header_checks(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(read_idx(tmp_path / "a.gz", ndim=3), a)
    with pytest.raises(IdxError, match="in 1"):
        read_idx(tmp_path / "a.gz", ndim=1)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(IdxError, match="short holds 19 bytes of data; its header .* says 24"):
        read_idx(tmp_path / "short", ndim=3)
    (tmp_path / "png.gz").write_bytes(b"\x89PNG not gzip")
    with pytest.raises(IdxError, match="png.gz cannot be read"):
        read_idx(tmp_path / "png.gz", ndim=3)
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(IdxError, match="not an IDX file"):
        read_idx(tmp_path / "text", ndim=3)


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_the_official_test_split_is_kept_and_val_is_carved_from_train(tmp_path: Path, gz: bool) -> None:
    (train_images, train_labels), (test_images, test_labels) = _write_tree(tmp_path, gz=gz)
    s = load_source("fashion_mnist", str(tmp_path))
    assert s.images.shape == (N_TRAIN + N_TEST, 28, 28, 1) and s.class_names[9] == "Ankle boot"
    assert np.array_equal(s.images[N_TRAIN:, ..., 0], test_images) and np.array_equal(s.labels[:N_TRAIN], train_labels)

    dm = ClassificationDataModule("fashion_mnist", root=str(tmp_path), image_size=28, val_fraction=0.2, seed=3)
    dm.setup()
    split = dm.split_indices
    assert np.array_equal(split["test"], np.arange(N_TRAIN, N_TRAIN + N_TEST))  # the official 10k, as is
    assert len(split["val"]) == 40 and np.bincount(s.labels[split["val"]]).tolist() == [4] * 10
    assert len(np.unique(np.concatenate(list(split.values())))) == N_TRAIN + N_TEST
    x, y = dm.split_arrays("test")
    assert np.array_equal(y, test_labels)
    # pixels survive decoding: the standardized test images are an affine map of the written values
    raw = test_images[:, 0, 0].astype(np.float32) / 255
    assert np.allclose(x[:, 0, 0, 0], (raw - dm.normalization.mean[0]) / dm.normalization.std[0], atol=1e-5)


def test_max_train_samples_is_a_stratified_seeded_subset(tmp_path: Path) -> None:
    _write_tree(tmp_path)

    def train_split(limit: int | None, seed: int = 0) -> np.ndarray:
        dm = ClassificationDataModule("fashion_mnist", root=str(tmp_path), image_size=16, seed=seed,
                                      max_train_samples=limit)
        dm.setup()
        return dm.split_indices["train"], dm.image_set.labels

    full, labels = train_split(None)
    part, _ = train_split(50)
    assert len(full) == 180 and len(part) == 50 and set(part) <= set(full)
    assert np.bincount(labels[part]).tolist() == [5] * 10
    assert np.array_equal(part, train_split(50)[0]) and not np.array_equal(part, train_split(50, seed=1)[0])
    with pytest.raises(DataSourceError, match="max_train_samples=5 cannot hold every class"):
        train_split(5)
    with pytest.raises(DataSourceError, match="positive count or null"):
        ClassificationDataModule("fashion_mnist", max_train_samples=0)



def test_extra_val_samples_come_from_the_images_left_out_of_training(tmp_path: Path) -> None:
    _write_tree(tmp_path)

    def splits(extra: int) -> dict[str, np.ndarray]:
        dm = ClassificationDataModule("fashion_mnist", root=str(tmp_path), image_size=16, seed=4,
                                      max_train_samples=50, extra_val_samples=extra)
        dm.setup()
        return dm.split_indices

    plain, more = splits(0), splits(60)
    labels = load_source("fashion_mnist", str(tmp_path)).labels
    # train and test are the splits they are without the setting: a checkpoint trained on them stays valid
    assert np.array_equal(plain["train"], more["train"]) and np.array_equal(plain["test"], more["test"])
    added = np.setdiff1d(more["val"], plain["val"])
    assert set(plain["val"]) <= set(more["val"]) and len(added) == 60
    assert not set(added) & set(more["train"]) and not set(added) & set(more["test"])
    assert np.bincount(labels[added]).tolist() == [6] * 10
    with pytest.raises(DataSourceError, match="extra_val_samples=131: only 130 training images are left out"):
        splits(131)
    with pytest.raises(DataSourceError, match="extra_val_samples=-1: use 0 or a positive count"):
        ClassificationDataModule("fashion_mnist", extra_val_samples=-1)

def test_missing_and_corrupt_files_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="apt-get install dataset-fashion-mnist"):
        load_source("fashion_mnist", str(tmp_path))
    _write_tree(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])  # a truncated download
    with pytest.raises(DataSourceError, match="t10k-labels-idx1-ubyte.gz .*--reinstall dataset-fashion-mnist"):
        load_source("fashion_mnist", str(tmp_path))
    with pytest.raises(DataSourceError, match="data.root is only read by the fashion_mnist, imagefolder sources"):
        load_source("mnist5k", str(tmp_path))


@pytest.mark.integration
@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_the_real_debian_files() -> None:
    s = load_source("fashion_mnist")
    assert s.images.shape == (70_000, 28, 28, 1) and len(s.test_indices) == 10_000
    assert np.bincount(s.labels).tolist() == [7000] * 10
    assert 0.4 < (s.images > 0).mean() < 0.6  # clothes on a black background (0.50), not noise or blanks
    dm = ClassificationDataModule("fashion_mnist", image_size=32, max_train_samples=2000)
    dm.setup()
    assert {k: len(v) for k, v in dm.split_indices.items()} == {"train": 2000, "val": 6000, "test": 10_000}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (dm.batch_size, 1, 32, 32) and y.max() <= 9
