"""The deployment's Ed25519 public key file, read without ``cryptography`` (which the device does not have).

The publisher writes the key with ``cryptography``'s
``public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)``. For Ed25519 that DER is always the
same 12-byte prefix followed by the 32 raw key bytes (RFC 8410), so checking the prefix is a
complete parse; any other key type or file is refused rather than guessed at.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path

from edgeqat.errors import EdgeqatError

__all__ = ["ED25519_SPKI_PREFIX", "PublicKeyError", "key_id", "load_public_key", "public_key_pem"]

ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM_RE = re.compile(r"-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----")


class PublicKeyError(EdgeqatError, ValueError):
    """The public key file is missing or is not one Ed25519 key in PEM."""


def key_id(public_key: bytes) -> str:
    """First 16 hex digits of sha256 of the raw 32-byte public key: names a key, proves nothing."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def load_public_key(path: str | Path) -> bytes:
    """The raw 32-byte key from an Ed25519 ``-----BEGIN PUBLIC KEY-----`` PEM file (SubjectPublicKeyInfo).

    Raises:
        PublicKeyError: the file is missing, or holds something other than one Ed25519 public key.
    """
    path = Path(path)
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        raise PublicKeyError(f"public key {path} not found: copy the deployment's signing public key "
                             "there or pass --public-key PATH") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PublicKeyError(f"cannot read public key {path} ({e}): pass --public-key PATH") from None
    match = _PEM_RE.search(text)
    try:
        der = base64.b64decode("".join(match.group(1).split()), validate=True) if match else b""
    except (binascii.Error, ValueError):
        der = b""
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        raise PublicKeyError(f"{path} is not an Ed25519 public key in PEM (-----BEGIN PUBLIC KEY-----); "
                             "export it with PublicFormat.SubjectPublicKeyInfo")
    return der[len(ED25519_SPKI_PREFIX):]


def public_key_pem(public_key: bytes) -> str:
    """The PEM text :func:`load_public_key` reads (byte for byte what ``cryptography`` writes)."""
    if len(public_key) != 32:
        raise PublicKeyError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    b64 = base64.b64encode(ED25519_SPKI_PREFIX + public_key).decode("ascii")
    return f"-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"
