"""Device-side decoding (PNG, PGM/PPM, npy) and preprocessing, checked against PIL and the training code."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeqat.agent.images import ImageError, load_image, preprocess, resize_weights
from edgeqat.data.datamodule import to_tensor
from tests.unit.agent.helpers import PRE, png_bytes

RNG = np.random.default_rng(0)


def _image(h: int, w: int, c: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("depth", [8, 16])
def test_png_every_filter_and_colour_type(tmp_path: Path, channels: int, depth: int) -> None:
    image = _image(9, 7, channels)
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(image, filters=(0, 1, 2, 3, 4), depth=depth))
    np.testing.assert_array_equal(load_image(path), image)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16", "1"])
def test_png_written_by_pil(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(_image(23, 31, 3))
    img = rgb.convert(mode) if mode not in ("I;16",) else Image.fromarray(
        RNG.integers(0, 65536, (23, 31), dtype=np.uint16))
    img.save(tmp_path / "x.png")
    expected = np.asarray(img.convert("RGB") if mode == "P" else img)
    if mode == "I;16":
        expected = (expected >> 8).astype(np.uint8)
    if mode == "1":
        expected = expected.astype(np.uint8) * 255
    got = load_image(tmp_path / "x.png")
    np.testing.assert_array_equal(got, expected.reshape(got.shape))


def test_png_low_bit_palette(tmp_path: Path) -> None:
    img = Image.fromarray(_image(11, 13, 3)).quantize(colors=16)
    img.save(tmp_path / "x.png", bits=4)
    np.testing.assert_array_equal(load_image(tmp_path / "x.png"), np.asarray(img.convert("RGB")))


def test_interlaced_and_corrupt_png_are_refused(tmp_path: Path) -> None:
    data = bytearray(png_bytes(_image(4, 4, 3)))
    ihdr = bytes(data[12:29])
    patched = ihdr[:-1] + b"\x01"  # interlace method = Adam7
    data[12:29] = patched
    data[29:33] = struct.pack(">I", zlib.crc32(patched))
    (tmp_path / "i.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="interlaced PNG is not supported"):
        load_image(tmp_path / "i.png")
    data[40] ^= 0xFF
    (tmp_path / "c.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="c.png"):
        load_image(tmp_path / "c.png")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(ImageError, match="not a supported image"):
        load_image(tmp_path / "x.gif")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(tmp_path / "missing.png")


def test_pgm_ppm_ascii_binary_and_16_bit(tmp_path: Path) -> None:
    grey, rgb = _image(5, 6, 1), _image(5, 6, 3)
    (tmp_path / "a.pgm").write_bytes(b"P5\n# made by hand\n6 5\n255\n" + grey.tobytes())
    (tmp_path / "b.ppm").write_bytes(b"P6 6 5 255\n" + rgb.tobytes())
    (tmp_path / "c.pgm").write_text("P2\n6 5\n255\n" + " ".join(map(str, grey.reshape(-1))) + "\n")
    (tmp_path / "d.ppm").write_text("P3\n6 5 255\n" + "\n".join(map(str, rgb.reshape(-1))))
    (tmp_path / "e.pgm").write_bytes(b"P5\n6 5\n65535\n" + (grey.astype(">u2") * 257).tobytes())
    (tmp_path / "f.pgm").write_text("P2\n6 5\n15\n" + " ".join(map(str, grey.reshape(-1) // 17)))
    for name, expected in [("a.pgm", grey), ("b.ppm", rgb), ("c.pgm", grey), ("d.ppm", rgb), ("e.pgm", grey),
                           ("f.pgm", (grey // 17) * 17)]:
        np.testing.assert_array_equal(load_image(tmp_path / name), expected, err_msg=name)
    (tmp_path / "t.pgm").write_bytes(b"P5\n6 5\n255\n" + grey.tobytes()[:-3])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "t.pgm")


def test_npy(tmp_path: Path) -> None:
    image = _image(4, 5, 3)
    np.save(tmp_path / "a.npy", image)
    np.save(tmp_path / "b.npy", image[..., 0])
    np.save(tmp_path / "c.npy", image.astype(np.float32))
    np.testing.assert_array_equal(load_image(tmp_path / "a.npy"), image)
    np.testing.assert_array_equal(load_image(tmp_path / "b.npy"), image[..., :1])
    with pytest.raises(ImageError, match="uint8"):
        load_image(tmp_path / "c.npy")


def _training(image: np.ndarray, channels: int, size: int, mean: tuple, std: tuple) -> np.ndarray:
    x = to_tensor(image, channels, size)
    return ((x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)).numpy()


@pytest.mark.parametrize(("shape", "channels", "size"), [
    ((8, 8, 1), 1, 16), ((28, 28, 1), 1, 32), ((64, 64, 3), 3, 24), ((33, 17, 3), 3, 16), ((17, 33, 1), 1, 16),
    ((5, 40, 3), 1, 12), ((24, 24, 1), 3, 24), ((7, 7, 3), 3, 50), ((100, 3, 1), 1, 9),
])
def test_preprocess_matches_training(shape: tuple[int, int, int], channels: int, size: int) -> None:
    image = _image(*shape)
    mean, std = (0.3, 0.4, 0.5)[:channels], (0.2, 0.25, 0.3)[:channels]
    pre = replace(PRE, channels=channels, image_size=size, mean=mean, std=std)
    got = preprocess(image, pre)
    assert got.shape == (1, channels, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], _training(image, channels, size, mean, std), atol=1e-5, rtol=0)


def test_preprocess_drops_alpha_first() -> None:
    rgba = _image(10, 12, 4)
    pre = replace(PRE, channels=1, image_size=10)
    np.testing.assert_allclose(preprocess(rgba, pre), preprocess(rgba[..., :3], pre))
    la = _image(10, 12, 2)
    pre3 = replace(PRE, channels=3, image_size=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    np.testing.assert_allclose(preprocess(la, pre3)[0], _training(la[..., :1], 3, 10, (0.5,) * 3, (0.25,) * 3),
                               atol=1e-5)


def test_resize_weights_are_normalized_and_identity_at_scale_one() -> None:
    for n_in, n_out in [(8, 16), (64, 24), (17, 16), (3, 100)]:
        np.testing.assert_allclose(resize_weights(n_in, n_out).sum(1), 1.0)
    np.testing.assert_array_equal(resize_weights(9, 9), np.eye(9))
