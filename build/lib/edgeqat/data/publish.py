"""``edgeqat data publish``: a registered source written out as an ImageFolder tree of PNGs.

The tree is what the ``imagefolder`` source reads (``<class>/<index>.png``), locally or from
``s3://bucket/prefix/`` through the dataset cache, so any bundled set can stand in for a user's own
data in a run that trains from S3. File names are the sample's index in the source and PNG bytes are
deterministic, so publishing again writes (or uploads) nothing that is already there.

A local class-per-folder directory can be published to S3 as it is (``edgeqat data publish ./tree
s3://...``); a registered source name wins over a directory of the same name (pass ``./name``).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeqat.data.sources import ImageSet, list_sources, load_source
from edgeqat.errors import EdgeqatError

_MIN_INDEX_WIDTH = 5  # 00042.png: names sort like indices in any file browser


class PublishError(EdgeqatError):
    """A source cannot be published to the destination as asked; the message names the fix."""


@dataclass(frozen=True)
class PublishResult:
    """What one publish did.

    Attributes:
        source: the registered source name, or the local directory that was uploaded.
        dest: the local directory or ``s3://`` URI of the tree.
        class_counts: images per class folder.
        written: files written (local) or uploaded (S3) because they were new or changed.
        unchanged: files already there with the same bytes (not sent again).
        channels: 1 (grayscale PNGs) or 3 (RGB), for ``data.options.channels``.
    """

    source: str
    dest: str
    class_counts: dict[str, int] = field(default_factory=dict)
    written: int = 0
    unchanged: int = 0
    channels: int = 3

    @property
    def images(self) -> int:
        return sum(self.class_counts.values())

    def train_overrides(self) -> str:
        """The overrides that train on this tree (``edgeqat train <these> ...``)."""
        return f"data=imagefolder data.root={self.dest} data.in_chans={self.channels} " \
               f"data.options.channels={self.channels}"


def publish_imagefolder(source_name: str, dest: str, *, endpoint_url: str | None = None) -> PublishResult:
    """Write ``source_name`` as ``dest/<class>/<index>.png``; ``s3://`` destinations are uploaded.

    Args:
        source_name: a registered source (``edgeqat.data.list_sources()``, e.g. ``mnist5k``), or a
            local class-per-folder directory (S3 destinations only: it is uploaded as it is).
        dest: a local directory, or ``s3://bucket/prefix/``.
        endpoint_url: S3-compatible endpoint; default ``$MLFLOW_S3_ENDPOINT_URL``/``$AWS_ENDPOINT_URL``.

    Returns:
        Counts of what was written and what was already there.

    Raises:
        PublishError: unknown source, a destination holding files of another dataset, bad class names.
        DataSourceError: the source cannot be loaded. S3Error: bucket, keys or endpoint are wrong.
    """
    is_s3 = dest.startswith("s3://")
    if not is_s3 and "://" in dest:
        raise PublishError(f"Destination {dest!r} is neither a local directory nor s3://bucket/prefix/: pass one")
    if source_name not in list_sources() and Path(source_name).expanduser().is_dir():
        if not is_s3:
            raise PublishError(f"{source_name!r} is already a local class-per-folder tree: train on it with "
                               f"data=imagefolder data.root={source_name}, or publish it to an s3:// URI")
        return _upload_directory(Path(source_name).expanduser(), dest, endpoint_url)
    if source_name == "imagefolder" or source_name not in list_sources():
        choices = ", ".join(s for s in list_sources() if s != "imagefolder")
        raise PublishError(f"Unknown data source {source_name!r}: publish one of {choices}, or a local "
                           f"class-per-folder directory to an s3:// URI")
    image_set = load_source(source_name)
    if not is_s3:
        return _write_tree(image_set, Path(dest).expanduser(), dest)
    with tempfile.TemporaryDirectory(prefix="edgeqat-publish-") as tmp:
        staged = _write_tree(image_set, Path(tmp), dest)
        return _upload(Path(tmp), dest, endpoint_url, source_name, staged.class_counts, image_set.channels)


def _png_bytes(image: np.ndarray) -> bytes:
    """Deterministic PNG bytes of an ``HxWxC`` uint8 image (no timestamps or text chunks)."""
    from PIL import Image

    array = np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)  # 2-D uint8: "L", HxWx3: "RGB"
    return buffer.getvalue()


def _check_class_names(names: list[str], source: str) -> None:
    bad = [n for n in names if not n or n in (".", "..") or "/" in n or "\\" in n or n.startswith(".")]
    if bad:
        raise PublishError(f"Source {source!r} has class names that cannot be folder names: {bad[:5]}; "
                           "rename the classes in the source")


def _planned_files(image_set: ImageSet) -> dict[str, int]:
    """``<class>/<index>.png`` -> sample index, for every sample."""
    _check_class_names(image_set.class_names, image_set.name)
    width = max(_MIN_INDEX_WIDTH, len(str(len(image_set.labels) - 1)))
    return {f"{image_set.class_names[int(label)]}/{i:0{width}d}.png": i for i, label in enumerate(image_set.labels)}


def _existing_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def _refuse_foreign(extra: set[str], dest: str, source: str) -> None:
    """A tree mixing two datasets would train silently on both: refuse instead."""
    if extra:
        shown = ", ".join(sorted(extra)[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise PublishError(f"{dest} already holds {len(extra)} file(s) that are not part of {source} ({shown}): "
                           "publish to an empty directory or prefix, or delete them first")


def _write_tree(image_set: ImageSet, root: Path, dest: str) -> PublishResult:
    plan = _planned_files(image_set)
    _refuse_foreign(_existing_files(root) - set(plan), dest, image_set.name)
    written = unchanged = 0
    for rel, index in plan.items():
        data = _png_bytes(image_set.images[index])
        target = root / rel
        if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
            unchanged += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # a reader never sees half an image under a real name
        written += 1
    counts = Counter(rel.split("/", 1)[0] for rel in plan)
    return PublishResult(image_set.name, dest, dict(sorted(counts.items())), written, unchanged, image_set.channels)


def _upload(tree: Path, dest: str, endpoint_url: str | None, source: str, class_counts: dict[str, int],
            channels: int) -> PublishResult:
    from edgeqat.data.s3_cache import list_remote_files, upload_tree

    files = _existing_files(tree)
    _refuse_foreign(list_remote_files(dest, endpoint_url=endpoint_url) - files, dest, source)
    uploaded = upload_tree(tree, dest, endpoint_url=endpoint_url)
    return PublishResult(source, dest, class_counts, uploaded, len(files) - uploaded, channels)


def _upload_directory(root: Path, dest: str, endpoint_url: str | None) -> PublishResult:
    """Upload a local tree as it is, after checking it loads as an ImageFolder dataset."""
    image_set = load_source("imagefolder", str(root))
    counts = Counter(image_set.class_names[int(label)] for label in image_set.labels)
    channels = 1 if all(_is_grayscale(p) for p in list(image_set.images.paths)[:8]) else 3  # type: ignore[attr-defined]
    return _upload(root, dest, endpoint_url, str(root), dict(sorted(counts.items())), channels)


def _is_grayscale(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as img:
        return img.mode in ("1", "L", "I", "I;16", "F")
