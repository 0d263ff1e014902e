from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeqat.data import ClassificationDataModule, DataSourceError, list_sources, load_source


def test_sources_registered() -> None:
    assert {"mnist5k", "digits", "imagefolder", "synthetic"} <= set(list_sources())


def test_mnist5k_is_the_real_bundled_set() -> None:
    s = load_source("mnist5k")
    assert s.labels.shape == (5000,)
    assert np.bincount(s.labels).tolist() == [500] * 10
    assert s.images.shape == (5000, 28, 28, 1) and s.images.dtype == np.uint8
    assert 0.05 < (s.images > 0).mean() < 0.4  # ink on a black background, not noise


def test_mnist5k_split_sizes_stratified_and_deterministic() -> None:
    dm = ClassificationDataModule("mnist5k", val_fraction=0.1, test_fraction=0.2, seed=7)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.split_indices.items()}
    assert sizes == {"train": 3500, "val": 500, "test": 1000}
    for split, idx in dm.split_indices.items():
        counts = np.bincount(dm.image_set.labels[idx], minlength=10)
        assert counts.min() == counts.max() == sizes[split] // 10, split
    all_idx = np.concatenate(list(dm.split_indices.values()))
    assert len(np.unique(all_idx)) == 5000  # disjoint and complete

    again = ClassificationDataModule("mnist5k", val_fraction=0.1, test_fraction=0.2, seed=7)
    again.setup()
    other = ClassificationDataModule("mnist5k", val_fraction=0.1, test_fraction=0.2, seed=8)
    other.setup()
    assert all(np.array_equal(dm.split_indices[k], again.split_indices[k]) for k in dm.split_indices)
    assert not np.array_equal(dm.split_indices["test"], other.split_indices["test"])


def test_batches_shape_normalization_and_shuffle_determinism() -> None:
    def first_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        dm = ClassificationDataModule("digits", image_size=16, batch_size=32, seed=seed)
        dm.setup()
        return next(iter(dm.train_dataloader()))

    x, y = first_batch(3)
    assert x.shape == (32, 1, 16, 16) and y.shape == (32,)
    x2, y2 = first_batch(3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    dm = ClassificationDataModule("digits", image_size=16, seed=3)
    dm.setup()
    xs, _ = dm.split_arrays("train")
    assert abs(float(xs.mean())) < 0.05 and abs(float(xs.std()) - 1) < 0.05  # train split standardized


def test_channel_conversion_follows_config() -> None:
    dm = ClassificationDataModule("digits", image_size=16, in_chans=3)
    dm.setup()
    x, _ = next(iter(dm.val_dataloader()))
    assert dm.in_chans == 3 and x.shape[1] == 3


def _write_tree(root: Path, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.full((20, 24, 3), 40 * c, np.uint8) + rng.integers(0, 30, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")


def test_imagefolder_local_tree(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree")
    dm = ClassificationDataModule("imagefolder", root=str(tmp_path / "tree"), image_size=16,
                                  val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    assert dm.class_names == ["cat", "dog", "fox"] and dm.in_chans == 3
    assert sum(len(v) for v in dm.split_indices.values()) == 18
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 16, 16)


def test_imagefolder_names_corrupt_files(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "dog" / "broken.png").write_bytes(b"not a png")
    dm = ClassificationDataModule("imagefolder", root=str(tmp_path / "tree"))
    with pytest.raises(DataSourceError, match=r"Unreadable image\(s\): .*broken.png"):
        dm.setup()


@pytest.mark.parametrize(("source", "root", "fragment"), [
    ("imagefolder", "/missing", "does not exist: set data.root="),
    ("imagefolder", None, "needs data.root="),
    ("mnist5k", "/missing", "use data=imagefolder data.root=/missing"),
    ("nope", None, "Unknown data source 'nope'"),
])
def test_bad_data_config_errors(source: str, root: str | None, fragment: str) -> None:
    with pytest.raises(DataSourceError, match=fragment):
        ClassificationDataModule(source, root=root).setup()


def test_too_few_samples_per_class_is_clear(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree", per_class=1)
    with pytest.raises(DataSourceError, match="add images to the smallest class"):
        ClassificationDataModule("imagefolder", root=str(tmp_path / "tree")).setup()
