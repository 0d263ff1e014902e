"""``publish_imagefolder`` to a local directory: the tree the ``imagefolder`` source reads, written once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeqat.data import load_source
from edgeqat.cli import main
from edgeqat.data.publish import PublishError, publish_imagefolder


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file with its inode and mtime: a rewrite (even of the same bytes) changes them."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("publish") / "digits"
    return root, publish_imagefolder("digits", str(root))


def test_digits_become_ten_class_folders_of_readable_pngs(digits_tree) -> None:
    root, result = digits_tree
    source = load_source("digits")
    expected = {str(c): int(n) for c, n in enumerate(np.bincount(source.labels))}
    assert sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    assert {d.name: len(list(d.glob("*.png"))) for d in root.iterdir()} == expected
    assert result.class_counts == expected and result.images == 1797
    assert (result.written, result.unchanged, result.channels) == (1797, 0, 1)
    assert not [p for p in root.rglob("*") if p.is_file() and p.suffix != ".png"], "no temporary or stray files"

    # Names are the sample's index in the source, and the pixels are the source's pixels.
    for index in (0, 1000, 1796):
        label = int(source.labels[index])
        with Image.open(root / str(label) / f"{index:05d}.png") as img:
            assert img.mode == "L" and img.size == (8, 8)
            np.testing.assert_array_equal(np.asarray(img), source.images[index][..., 0])


def test_the_tree_loads_as_an_imagefolder_with_the_same_labels(digits_tree) -> None:
    root, _ = digits_tree
    folder = load_source("imagefolder", str(root), channels=1)
    source = load_source("digits")
    assert folder.class_names == source.class_names
    assert np.bincount(folder.labels).tolist() == np.bincount(source.labels).tolist()
    assert folder.images[0].shape == (8, 8, 1)


def test_republish_is_idempotent_and_repairs_only_what_changed(digits_tree) -> None:
    root, _ = digits_tree
    before = _snapshot(root)
    again = publish_imagefolder("digits", str(root))
    assert (again.written, again.unchanged) == (0, 1797)
    assert _snapshot(root) == before, "unchanged files must not be rewritten"

    damaged = root / "3" / sorted(p.name for p in (root / "3").iterdir())[0]
    good = damaged.read_bytes()
    damaged.write_bytes(b"not a png")
    repaired = publish_imagefolder("digits", str(root))
    assert (repaired.written, repaired.unchanged) == (1, 1796)
    assert damaged.read_bytes() == good


def test_refuses_a_destination_holding_another_dataset(tmp_path: Path) -> None:
    (tmp_path / "tree" / "cat").mkdir(parents=True)
    (tmp_path / "tree" / "cat" / "whiskers.png").write_bytes(b"x")
    with pytest.raises(PublishError, match=r"holds 1 file\(s\) that are not part of digits \(cat/whiskers.png\)"):
        publish_imagefolder("digits", str(tmp_path / "tree"))
    assert not (tmp_path / "tree" / "0").exists(), "nothing is written before the check"


@pytest.mark.parametrize(("source", "dest", "fragment"), [
    ("digitz", "{tmp}/out", "Unknown data source 'digitz': publish one of digits, fashion_mnist, mnist5k, synthetic"),
    ("imagefolder", "{tmp}/out", "Unknown data source 'imagefolder'"),
    ("{tmp}", "{tmp}/out", "is already a local class-per-folder tree: train on it with data=imagefolder"),
    ("digits", "gs://bucket/x", "neither a local directory nor s3://bucket/prefix/"),
])
def test_bad_arguments_are_one_line_exit_2(source: str, dest: str, fragment: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "publish", source.format(tmp=tmp_path), dest.format(tmp=tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("edgeqat: error: ") and fragment in err


def test_cli_prints_counts_and_the_overrides_to_train_on_it(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "publish", "digits", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert f"Published digits to {tmp_path / 't'}: 1797 images in 10 classes; 1797 written, 0 unchanged" in out
    assert f"data=imagefolder data.root={tmp_path / 't'} data.in_chans=1 data.options.channels=1" in out
