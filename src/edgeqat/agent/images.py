"""Images on the device: PNG, PGM/PPM and ``.npy`` decoded to ``HxWxC`` uint8, then the model's preprocessing.

The device has no PIL or torch, so decoding is zlib + numpy and :func:`preprocess` re-implements
``edgeqat.data.datamodule.to_tensor`` + normalization: pixels / 255 as ``CHW``; channel conversion
(an alpha channel is dropped first, then RGB -> 1 channel is the *mean* of the channels as in
``to_tensor``, 1 -> 3 replicates); resize with the semantics of torch's
``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``; ``(x - mean) / std``.
A model trained on images that PIL converted to ``L`` (luma weights) sees slightly different grey
values from an RGB file here: feed such models greyscale files.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from edgeqat.agent.manifest import Preprocessing
from edgeqat.errors import EdgeqatError

__all__ = ["ImageError", "decode_npy", "decode_png", "decode_pnm", "load_image", "preprocess", "resize_weights"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_SUPPORTED = "PNG, PGM/PPM (P2, P3, P5, P6) or .npy (HxW or HxWxC uint8)"


class ImageError(EdgeqatError, ValueError):
    """An image file this device cannot decode; the message names the file and what is supported."""


def load_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` (by its content, not its name) to ``HxWxC`` uint8, C in 1..4.

    Raises:
        ImageError: unreadable file or unsupported format.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read image {path} ({e.strerror or e}): check the path") from None
    try:
        if data.startswith(_PNG_SIGNATURE):
            return decode_png(data)
        if data[:2] in (b"P2", b"P3", b"P5", b"P6"):
            return decode_pnm(data)
        if data.startswith(b"\x93NUMPY"):
            return decode_npy(path)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None
    except (ValueError, IndexError, struct.error, zlib.error) as e:
        raise ImageError(f"{path} is a corrupt image ({e})") from None
    raise ImageError(f"{path} is not a supported image: use {_SUPPORTED}")


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth) into ``height x stride`` bytes."""
    if len(raw) < height * (stride + 1):
        raise ImageError(f"PNG image data is truncated ({len(raw)} of {height * (stride + 1)} bytes)")
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], np.frombuffer(raw, np.uint8, stride, start + 1)
        if kind == 0:
            cur = row.copy()
        elif kind == 1:  # Sub: a running sum per byte position within the pixel, mod 256
            pad = (-stride) % bpp
            cur = np.cumsum(np.concatenate([row, np.zeros(pad, np.uint8)]).reshape(-1, bpp), axis=0,
                            dtype=np.uint8).reshape(-1)[:stride]
        elif kind == 2:
            cur = row + prev
        elif kind in (3, 4):  # depend on the byte just decoded: sequential within the row
            cur_b, up, src = bytearray(stride), prev.tobytes(), row.tobytes()
            for i in range(stride):
                left = cur_b[i - bpp] if i >= bpp else 0
                if kind == 3:
                    cur_b[i] = (src[i] + ((left + up[i]) >> 1)) & 0xFF
                else:
                    ul = up[i - bpp] if i >= bpp else 0
                    p = left + up[i] - ul
                    pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else up[i] if pb <= pc else ul
                    cur_b[i] = (src[i] + pred) & 0xFF
            cur = np.frombuffer(bytes(cur_b), np.uint8)
        else:
            raise ImageError(f"PNG row {y} has unknown filter type {kind}")
        out[y] = prev = cur
    return out


def decode_png(data: bytes) -> np.ndarray:
    """Non-interlaced PNG of any colour type; 16-bit samples keep their high byte, palettes become RGB."""
    pos, ihdr, palette, idat = 8, None, None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ImageError(f"PNG chunk {kind.decode('latin-1')!r} fails its CRC: the file is corrupt")
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if ihdr is None or not idat:
        raise ImageError("PNG has no IHDR or no image data: the file is truncated")
    width, height, depth, colour, _, _, interlace = ihdr
    if interlace:
        raise ImageError("Adam7-interlaced PNG is not supported: re-save it without interlacing")
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or (depth < 8 and colour not in (0, 3)) \
            or (colour == 3 and depth == 16):
        raise ImageError(f"PNG colour type {colour} with bit depth {depth} is not a valid combination")
    channels = _PNG_CHANNELS[colour]
    bits = channels * depth
    stride, bpp = (width * bits + 7) // 8, max(1, bits // 8)
    rows = _unfilter(zlib.decompress(b"".join(idat)), height, stride, bpp)
    if depth == 16:
        pixels = rows.reshape(height, width, channels, 2)[..., 0]  # big-endian: the high byte first
    elif depth == 8:
        pixels = rows.reshape(height, width, channels)
    else:
        values = np.unpackbits(rows, axis=1).reshape(height, -1, depth)[:, :width]
        values = (values * (1 << np.arange(depth - 1, -1, -1, dtype=np.uint8))).sum(-1).astype(np.uint8)
        pixels = values[..., None] if colour == 3 else (values * (255 // ((1 << depth) - 1)))[..., None]
    if colour == 3:
        if palette is None:
            raise ImageError("palette PNG has no PLTE chunk")
        if int(pixels.max(initial=0)) >= len(palette):
            raise ImageError("palette PNG uses an index past the end of its palette")
        pixels = palette[pixels[..., 0]]  # transparency (tRNS) is dropped: the model sees no alpha
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def _pnm_tokens(data: bytes, count: int) -> tuple[list[int], int]:
    """The first ``count`` integers of a PNM header (comments skipped) and the offset after the last."""
    tokens, pos = [], 2
    while len(tokens) < count:
        while pos < len(data) and (data[pos:pos + 1].isspace() or data[pos:pos + 1] == b"#"):
            if data[pos:pos + 1] == b"#":
                pos = data.find(b"\n", pos)
                pos = len(data) if pos < 0 else pos
            pos += 1
        end = pos
        while end < len(data) and data[end:end + 1].isdigit():
            end += 1
        if end == pos:
            raise ImageError("PGM/PPM header is truncated or not numeric")
        tokens.append(int(data[pos:end]))
        pos = end
    return tokens, pos


def decode_pnm(data: bytes) -> np.ndarray:
    """P2/P5 (grey) and P3/P6 (RGB), ASCII or binary; any maxval up to 65535 is scaled to 0..255."""
    kind = data[:2]
    channels = 3 if kind in (b"P3", b"P6") else 1
    (width, height, maxval), pos = _pnm_tokens(data, 3)
    if not 0 < maxval < 65536 or width < 1 or height < 1:
        raise ImageError(f"PGM/PPM header {width}x{height} maxval {maxval} is invalid")
    n = width * height * channels
    if kind in (b"P5", b"P6"):
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        body = data[pos + 1:pos + 1 + n * dtype.itemsize]  # exactly one whitespace after maxval
        if len(body) < n * dtype.itemsize:
            raise ImageError(f"PGM/PPM pixel data is truncated ({len(body)} of {n * dtype.itemsize} bytes)")
        values = np.frombuffer(body, dtype).astype(np.float64)
    else:
        values = np.array(data[pos:].split()[:n], dtype=np.float64)
        if values.size < n:
            raise ImageError(f"PGM/PPM has {values.size} of {n} pixel values")
    if values.max(initial=0) > maxval:
        raise ImageError(f"PGM/PPM has values above its maxval {maxval}")
    scaled = values if maxval == 255 else np.round(values * 255.0 / maxval)
    return scaled.astype(np.uint8).reshape(height, width, channels)


def decode_npy(path: Path) -> np.ndarray:
    """An ``HxW`` or ``HxWxC`` (C in 1..4) uint8 array saved with ``np.save``; no pickles."""
    array = np.load(path, allow_pickle=False)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise ImageError(f".npy holds {array.dtype} {array.shape}: save an HxW or HxWxC uint8 array (C in 1..4)")
    return np.ascontiguousarray(array if array.ndim == 3 else array[..., None])


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """``out x in`` weights of torch's antialiased bilinear resize (PIL's triangle filter) along one axis.

    For output ``i``: ``center = scale * (i + 0.5)`` with ``scale = in / out``; the filter spans
    ``support = scale`` when downsampling (so every input pixel contributes) and 1 when
    upsampling (plain bilinear); weights ``max(0, 1 - |(j - center + 0.5) / max(scale, 1)|)``
    over ``j in [int(center - support + 0.5), int(center + support + 0.5))`` clipped to the
    image, normalized to sum to 1 (``aten/src/ATen/native/cpu/UpSampleKernel.cpp``, ``_compute_weights_aa``).
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * inv))
        total = w.sum()
        weights[i, lo:hi] = w / total if total > 0 else w
    return weights


def preprocess(image: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """``HxWxC`` uint8 -> the model's ``(1, C, S, S)`` float32 input, as training fed it.

    Alpha (C = 2 or 4) is dropped before any channel conversion.

    Raises:
        ImageError: not an ``HxWxC`` uint8 array with 1-4 channels.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or not 1 <= image.shape[2] <= 4:
        raise ImageError(f"expected an HxWxC uint8 image with 1-4 channels, got {image.dtype} {image.shape}")
    x = np.transpose(image, (2, 0, 1)).astype(np.float32) / np.float32(1.0 / pre.scale)
    if x.shape[0] in (2, 4):
        x = x[:-1]
    if x.shape[0] != pre.channels:
        x = x.mean(0, keepdims=True, dtype=np.float32) if pre.channels == 1 else np.repeat(x, pre.channels, 0)
    size = pre.image_size
    if x.shape[1:] != (size, size):
        wy, wx = resize_weights(x.shape[1], size), resize_weights(x.shape[2], size)
        x = np.einsum("oh,chw,pw->cop", wy, x.astype(np.float64), wx)
    mean = np.asarray(pre.mean, np.float64)[:, None, None]
    std = np.asarray(pre.std, np.float64)[:, None, None]
    return ((x - mean) / std).astype(np.float32)[None]
