"""``ClassificationDataModule``: a seeded, stratified train/val/test split of any image source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from edgeqat.data.sources import DataSourceError, ImageSet, load_source

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std computed on the train split; the preprocessing contract of exported models."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                     test_indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Indices per split, class proportions preserved, identical for the same seed.

    With ``test_indices`` (a dataset's official test split) those are the test split and
    ``val_fraction`` is the share of the remaining samples held out for validation;
    ``test_fraction`` is then unused.
    """
    from sklearn.model_selection import train_test_split

    if test_indices is None and not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataSourceError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in (0, 1) "
            "and sum to < 1"
        )
    if test_indices is not None and not 0 < val_fraction < 1:
        raise DataSourceError(f"data.val_fraction={val_fraction} must be in (0, 1)")
    idx = np.arange(len(labels))
    try:
        if test_indices is None:
            rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
            val_share = val_fraction / (1 - test_fraction)
        else:
            test = np.asarray(test_indices)
            rest, val_share = np.setdiff1d(idx, test), val_fraction
        train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=seed)
    except ValueError as e:
        raise DataSourceError(f"Cannot split the dataset by class ({e}); add images to the smallest class") from e
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def subsample(indices: np.ndarray, labels: np.ndarray, limit: int | None, seed: int,
              key: str = "data.max_train_samples") -> np.ndarray:
    """At most ``limit`` of ``indices``, stratified and seeded (``key`` names the setting in errors)."""
    from sklearn.model_selection import train_test_split

    if limit is None or limit >= len(indices):
        return indices
    try:
        kept, _ = train_test_split(indices, train_size=limit, stratify=labels[indices], random_state=seed)
    except ValueError as e:
        raise DataSourceError(f"{key}={limit} cannot hold every class ({e}): raise it") from e
    return np.sort(kept)


def extend_val(split: dict[str, np.ndarray], unused: np.ndarray, labels: np.ndarray, extra: int,
               seed: int) -> None:
    """Add ``extra`` of the training images ``data.max_train_samples`` left out (stratified, seeded) to val.

    Why: what is *chosen* on validation (the float fallback's set, a sweep's best child) carries that
    split's luck, and a 6,000-image split cannot tell apart candidates worth a few images each. The
    images a CPU budget keeps out of training are as unseen as the validation split, so they enlarge it
    at no training cost; train and test stay exactly the splits they are without this setting.
    """
    if extra > len(unused):
        raise DataSourceError(
            f"data.extra_val_samples={extra}: only {len(unused)} training images are left out of training "
            "(lower it, or lower data.max_train_samples)")
    added = subsample(unused, labels, extra, seed, key="data.extra_val_samples")
    split["val"] = np.sort(np.concatenate([split["val"], added]))


def to_tensor(image: np.ndarray, in_chans: int, size: int) -> torch.Tensor:
    """``HxWxC`` uint8 -> ``in_chans x size x size`` float in [0, 1]."""
    return to_tensor_batch(image[None], in_chans, size)[0]


def to_tensor_batch(images: np.ndarray, in_chans: int, size: int) -> torch.Tensor:
    """``NxHxWxC`` uint8 -> ``N x in_chans x size x size`` float in [0, 1] (one resize for the batch)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] != in_chans:
        if in_chans == 1:
            x = x.mean(1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, in_chans, -1, -1)
        else:
            raise DataSourceError(f"Cannot convert {x.shape[1]}-channel images to data.in_chans={in_chans}")
    if x.shape[2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class ImageDataset(Dataset):
    """One split: decodes (or looks up) images, normalizes, optionally jitters by a few pixels."""

    def __init__(self, images: Sequence[np.ndarray], labels: np.ndarray, indices: np.ndarray, in_chans: int,
                 size: int, norm: Normalization, augment: bool = False, preload: bool = False) -> None:
        self.images, self.labels, self.indices = images, labels, indices
        self.in_chans, self.size, self.augment = in_chans, size, augment
        self.mean = torch.tensor(norm.mean).view(-1, 1, 1)
        self.std = torch.tensor(norm.std).view(-1, 1, 1)
        self.cache = self._preload() if preload else None

    def __len__(self) -> int:
        return len(self.indices)

    def _preload(self, chunk: int = 4096) -> torch.Tensor:
        """Decode an in-memory split with one resize per chunk of images, not one per image."""
        assert isinstance(self.images, np.ndarray)
        parts = [to_tensor_batch(self.images[self.indices[i:i + chunk]], self.in_chans, self.size)
                 for i in range(0, len(self.indices), chunk)]
        x = torch.cat(parts) if parts else torch.empty(0, self.in_chans, self.size, self.size)
        return (x - self.mean) / self.std

    def _load(self, i: int) -> torch.Tensor:
        x = to_tensor(self.images[int(self.indices[i])], self.in_chans, self.size)
        return (x - self.mean) / self.std

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.cache[i] if self.cache is not None else self._load(i)
        if self.augment:
            x = _random_shift(x, max_shift=max(1, self.size // 16))
        return x, int(self.labels[self.indices[i]])


def _random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(1, 2))


class ClassificationDataModule(L.LightningDataModule):
    """Splits a registered source (``data.source``) into seeded, stratified train/val/test sets.

    Everything that depends on the data (``num_classes``, ``in_chans``, ``class_names``,
    ``normalization``) is known after :meth:`setup`, so the backbone is built to fit the dataset.
    """

    def __init__(self, source: str, root: str | None = None, options: dict[str, Any] | None = None,
                 image_size: int = 32, in_chans: int | None = None, batch_size: int = 64,
                 eval_batch_size: int = 256, num_workers: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, augment: bool = False, seed: int = 42,
                 max_train_samples: int | None = None, extra_val_samples: int = 0) -> None:
        super().__init__()
        if image_size < 8:
            raise DataSourceError(f"data.image_size={image_size} is too small; use >= 8")
        if max_train_samples is not None and max_train_samples < 1:
            raise DataSourceError(f"data.max_train_samples={max_train_samples}: use a positive count or null (all)")
        if extra_val_samples < 0:
            raise DataSourceError(f"data.extra_val_samples={extra_val_samples}: use 0 or a positive count")
        if in_chans not in (None, 1, 3):
            raise DataSourceError(f"data.in_chans={in_chans}: use 1, 3 or null (the dataset's own)")
        self.source, self.root, self.options = source, root, dict(options or {})
        self.image_size, self.requested_in_chans = image_size, in_chans
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.augment, self.seed, self.max_train_samples = augment, seed, max_train_samples
        self.extra_val_samples = extra_val_samples
        self.image_set: ImageSet | None = None
        self.split_indices: dict[str, np.ndarray] = {}
        self.datasets: dict[str, ImageDataset] = {}
        self.normalization: Normalization | None = None

    @property
    def name(self) -> str:
        return self.source

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.image_set = s = load_source(self.source, self.root, **self.options)
        split = stratified_split(s.labels, self.val_fraction, self.test_fraction, self.seed, s.test_indices)
        candidates = split["train"]
        split["train"] = subsample(candidates, s.labels, self.max_train_samples, self.seed)
        if self.extra_val_samples:
            extend_val(split, np.setdiff1d(candidates, split["train"]), s.labels, self.extra_val_samples, self.seed)
        self.split_indices = split
        preload = isinstance(s.images, np.ndarray)  # bundled sets fit in memory: decode once
        self.normalization = self._fit_normalization(s)
        self.datasets = {
            split: ImageDataset(s.images, s.labels, idx, self.in_chans, self.image_size, self.normalization,
                                augment=self.augment and split == "train", preload=preload)
            for split, idx in self.split_indices.items()
        }

    def _fit_normalization(self, s: ImageSet) -> Normalization:
        idx = self.split_indices["train"]
        sample = idx[np.linspace(0, len(idx) - 1, min(len(idx), 512)).astype(int)]
        x = torch.stack([to_tensor(s.images[int(i)], self.in_chans, self.image_size) for i in sample])
        return Normalization(tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist()))

    @property
    def in_chans(self) -> int:
        assert self.image_set is not None, "call setup() first"
        return self.requested_in_chans or self.image_set.channels

    @property
    def num_classes(self) -> int:
        assert self.image_set is not None, "call setup() first"
        return self.image_set.num_classes

    @property
    def class_names(self) -> list[str]:
        assert self.image_set is not None, "call setup() first"
        return self.image_set.class_names

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(self.datasets[split], batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, generator=generator, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def split_arrays(self, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A split as normalized ``NCHW`` float32 + labels, for ONNX Runtime evaluation."""
        ds = self.datasets[split]
        n = len(ds) if limit is None else min(limit, len(ds))
        xs = ds.cache[:n] if ds.cache is not None else torch.stack([ds._load(i) for i in range(n)])
        return xs.numpy().astype(np.float32), ds.labels[ds.indices[:n]]
