"""The signed release manifest: the one contract between the publisher (controller) and the device agent.

A deployment location (a local directory or ``s3://bucket/prefix/``) holds::

    manifest.json                                   MANIFEST_KEY: what the target should run now
    releases/v<version>-<sha256[:12]>/model.onnx    release_key(version, sha256): immutable models
    heartbeats/<agent_id>.json                      HEARTBEAT_PREFIX: what each device runs

``manifest.json`` is ``{"payload": {...}, "signature": b64, "key_id": hex16}``. The signature is
Ed25519 over :func:`canonical_json` of the payload, so any byte-exact JSON encoder on either side
agrees on what was signed; ``key_id`` (sha256 of the raw public key, 16 hex) only makes a wrong key
easy to diagnose, it is not trusted. Everything here is stdlib-only: the device imports it. Key
files are read by :mod:`edgeqat.agent.keys` (its ``load_public_key``, ``public_key_pem`` are re-exported here).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from edgeqat.agent import ed25519
from edgeqat.agent.keys import key_id, load_public_key, public_key_pem
from edgeqat.errors import EdgeqatError

__all__ = [
    "HEARTBEAT_PREFIX", "MANIFEST_KEY", "SCHEMA", "Manifest", "ManifestError", "Preprocessing", "ReleasePayload",
    "SignatureError", "canonical_json", "encode_manifest", "key_id", "load_public_key", "parse_manifest",
    "public_key_pem", "release_dir", "release_key",
]

MANIFEST_KEY = "manifest.json"
HEARTBEAT_PREFIX = "heartbeats/"
SCHEMA = 1
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(EdgeqatError, ValueError):
    """A manifest (or key file) that is not valid JSON, misses a field or has one of the wrong type."""


class SignatureError(ManifestError):
    """A manifest whose signature is missing, malformed or not made by the trusted key."""


def canonical_json(obj: Any) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ManifestError(f"version {version!r} must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return version


def _check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise ManifestError(f"sha256 {sha256!r} must be 64 lowercase hex digits")
    return sha256


def release_dir(version: str, sha256: str) -> str:
    """``v<version>-<sha256[:12]>``: one directory per release, the same name in the store and on devices."""
    return f"v{_check_version(version)}-{_check_sha256(sha256)[:12]}"


def release_key(version: str, sha256: str) -> str:
    """Where a release's model lives, relative to the location: ``releases/v3-0123456789ab/model.onnx``."""
    return f"releases/{release_dir(version, sha256)}/model.onnx"


def _field(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where} has no {key!r}")
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ManifestError(f"{where}.{key} must be {names}, not {type(value).__name__} {value!r}")
    return value


def _exact_keys(d: Any, expected: set[str], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ManifestError(f"{where} must be a JSON object, not {type(d).__name__}")
    if unknown := sorted(set(d) - expected):
        raise ManifestError(f"{where} has unknown keys {unknown}; schema {SCHEMA} has {sorted(expected)}")
    return d


def _floats(values: Any, n: int, where: str) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ManifestError(f"{where} must be a list of {n} numbers (one per channel), not {values!r}")
    return tuple(float(v) for v in values)


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise ManifestError(f"preprocessing.channels={channels}: use 1 or 3")
    return channels


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input; written by training into the model, applied by the device.

    The values mirror ``edgeqat.data.datamodule.to_tensor`` + ``Normalization``: pixels scaled by
    ``scale``, channels converted, resized (``bilinear_antialias``) to ``image_size`` squared, then
    ``(x - mean) / std`` per channel, fed as ``NCHW`` float32 to ``input_name``.
    """

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    input_name: str = "input"
    layout: str = "NCHW"
    dtype: str = "float32"
    scale: float = 1 / 255
    resize: str = "bilinear_antialias"

    def __post_init__(self) -> None:
        _check_channels(self.channels)
        if self.image_size < 1:
            raise ManifestError(f"preprocessing.image_size={self.image_size} must be >= 1")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ManifestError(f"preprocessing.mean/std need {self.channels} values, got {self.mean} / {self.std}")
        if not all(s > 0 for s in self.std):
            raise ManifestError(f"preprocessing.std={list(self.std)} must be > 0")
        if not self.class_names or not all(isinstance(c, str) for c in self.class_names):
            raise ManifestError("preprocessing.class_names must be a non-empty list of strings")
        for key, allowed in (("layout", "NCHW"), ("dtype", "float32"), ("resize", "bilinear_antialias")):
            if getattr(self, key) != allowed:
                raise ManifestError(f"preprocessing.{key}={getattr(self, key)!r}: this agent supports {allowed!r}")
        if not self.scale > 0:
            raise ManifestError(f"preprocessing.scale={self.scale} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return {"input_name": self.input_name, "layout": self.layout, "dtype": self.dtype,
                "channels": self.channels, "image_size": self.image_size, "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std), "resize": self.resize,
                "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, d: Any) -> Preprocessing:
        """Raises: ManifestError naming the missing or mistyped key."""
        w = "preprocessing"
        d = _exact_keys(d, set(cls.__dataclass_fields__), w)
        channels = _check_channels(_field(d, "channels", int, w))
        names = _field(d, "class_names", list, w)
        return cls(channels=channels, image_size=_field(d, "image_size", int, w),
                   mean=_floats(_field(d, "mean", list, w), channels, f"{w}.mean"),
                   std=_floats(_field(d, "std", list, w), channels, f"{w}.std"),
                   class_names=tuple(names), input_name=_field(d, "input_name", str, w),
                   layout=_field(d, "layout", str, w), dtype=_field(d, "dtype", str, w),
                   scale=float(_field(d, "scale", (int, float), w)), resize=_field(d, "resize", str, w))


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"payload.model_key {key!r} must be a relative key like 'releases/v3-…/model.onnx'")
    return key


def _check_time(value: str, where: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.utcoffset() != timedelta(0):
        raise ManifestError(f"{where}={value!r} must be an ISO-8601 UTC time like '2025-01-31T12:00:00+00:00'")
    return value


@dataclass(frozen=True)
class ReleasePayload:
    """What a manifest asks a target to run: the model file, its checksum and how to feed it."""

    target: str
    model_name: str
    version: str
    model_key: str
    sha256: str
    size_bytes: int
    preprocessing: Preprocessing
    published_at: str
    run_id: str = ""
    source: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        if self.schema != SCHEMA:
            raise ManifestError(f"manifest schema {self.schema} is not the one this agent reads ({SCHEMA}): "
                                "upgrade the agent or republish with this schema")
        _check_version(self.version)
        _check_sha256(self.sha256)
        _check_key(self.model_key)
        _check_time(self.published_at, "payload.published_at")
        if self.size_bytes < 0:
            raise ManifestError(f"payload.size_bytes={self.size_bytes} must be >= 0")

    @property
    def release_dir(self) -> str:
        return release_dir(self.version, self.sha256)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "target": self.target, "model_name": self.model_name,
                "version": self.version, "model_key": self.model_key, "sha256": self.sha256,
                "size_bytes": self.size_bytes, "metrics": dict(self.metrics),
                "preprocessing": self.preprocessing.to_dict(), "published_at": self.published_at,
                "run_id": self.run_id, "source": self.source}

    @classmethod
    def from_dict(cls, d: Any) -> ReleasePayload:
        """Raises: ManifestError naming the missing or mistyped key."""
        w = "payload"
        d = _exact_keys(d, set(cls.__dataclass_fields__), w)
        metrics = _field(d, "metrics", dict, w)
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ManifestError(f"payload.metrics[{k!r}] must be a number, not {v!r}")
        return cls(schema=_field(d, "schema", int, w), target=_field(d, "target", str, w),
                   model_name=_field(d, "model_name", str, w), version=_field(d, "version", str, w),
                   model_key=_field(d, "model_key", str, w), sha256=_field(d, "sha256", str, w),
                   size_bytes=_field(d, "size_bytes", int, w),
                   preprocessing=Preprocessing.from_dict(_field(d, "preprocessing", dict, w)),
                   published_at=_field(d, "published_at", str, w), run_id=_field(d, "run_id", str, w),
                   source=_field(d, "source", str, w), metrics={k: float(v) for k, v in metrics.items()})


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: a payload, the Ed25519 signature over its canonical JSON, and the signer's key id."""

    payload: ReleasePayload
    signature: bytes
    key_id: str

    @classmethod
    def signed(cls, payload: ReleasePayload, sign: Callable[[bytes], bytes], public_key: bytes) -> Manifest:
        """Sign ``payload`` with ``sign`` (e.g. ``cryptography``'s ``Ed25519PrivateKey.sign``).

        Raises:
            SignatureError: ``sign`` did not make a signature that ``public_key`` verifies.
        """
        signature = sign(canonical_json(payload.to_dict()))
        if not ed25519.verify(public_key, canonical_json(payload.to_dict()), signature):
            raise SignatureError(f"the signing key does not match the public key {key_id(public_key)}")
        return cls(payload, signature, key_id(public_key))

    def to_bytes(self) -> bytes:
        doc = {"payload": self.payload.to_dict(), "signature": base64.b64encode(self.signature).decode("ascii"),
               "key_id": self.key_id}
        return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def parse(cls, data: bytes, public_key: bytes) -> Manifest:
        """The manifest in ``data``, once its signature is checked against the raw 32-byte ``public_key``.

        Raises:
            SignatureError: no signature, a malformed one, or one the trusted key did not make.
            ManifestError: not JSON, or a payload field missing or of the wrong type.
        """
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"manifest is not JSON ({e})") from None
        doc = _exact_keys(doc, {"payload", "signature", "key_id"}, "manifest")
        if "payload" not in doc:
            raise ManifestError("manifest has no 'payload'")
        signature, named = doc.get("signature"), doc.get("key_id")
        if not isinstance(signature, str):
            raise SignatureError("manifest has no signature")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("manifest signature is not base64") from None
        if not ed25519.verify(public_key, canonical_json(doc["payload"]), raw):
            hint = (f" (signed with key {named}, this agent trusts {key_id(public_key)})"
                    if isinstance(named, str) and named != key_id(public_key) else "")
            raise SignatureError(f"manifest signature does not verify{hint}")
        return cls(ReleasePayload.from_dict(doc["payload"]), raw, named if isinstance(named, str) else "")


def encode_manifest(payload: ReleasePayload, signature: bytes, public_key: bytes) -> bytes:
    """``manifest.json`` bytes for a payload signed elsewhere over ``canonical_json(payload.to_dict())``.

    Raises:
        SignatureError: ``signature`` is not ``public_key``'s signature of the payload.
    """
    return Manifest.signed(payload, lambda _: signature, public_key).to_bytes()


def parse_manifest(data: bytes, public_key: bytes) -> ReleasePayload:
    """The payload of verified ``manifest.json`` bytes (see :meth:`Manifest.parse`)."""
    return Manifest.parse(data, public_key).payload
