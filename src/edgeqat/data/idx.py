"""The IDX format of (Fashion-)MNIST: a big-endian header, then one raw array.

Header: two zero bytes, a type code (``0x08``: unsigned byte, the only one these datasets use), the
number of dimensions, then one big-endian uint32 per dimension. Files may be gzipped (Debian ships
``*.gz``). Every check names the file, because a truncated download otherwise surfaces as a numpy
reshape error far from its cause.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

UBYTE = 0x08


class IdxError(ValueError):
    """A file is not a well-formed unsigned-byte IDX array; the message names the file."""


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The uint8 array of ``path`` (``.gz`` or raw), which must have ``ndim`` dimensions."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip's "not a gzipped file" and a truncated stream both land here
        raise IdxError(f"{path} cannot be read ({type(e).__name__}: {e})") from e
    if len(data) < 4 or data[:2] != b"\0\0":
        raise IdxError(f"{path} is not an IDX file (no IDX header)")
    dtype, dims = data[2], data[3]
    if dtype != UBYTE or dims != ndim:
        raise IdxError(f"{path} holds a type-0x{dtype:02x} array of {dims} dimension(s); "
                       f"expected unsigned bytes (0x08) in {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise IdxError(f"{path} is truncated inside its header")
    shape = struct.unpack(f">{dims}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise IdxError(f"{path} holds {len(data) - header} bytes of data; its header {shape} says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as IDX, gzipped when ``path`` ends in ``.gz`` (fixtures, exports)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = bytes([0, 0, UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
