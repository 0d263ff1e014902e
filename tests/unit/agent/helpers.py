"""What the agent tests share: a tiny ONNX classifier, a signing key, a publisher, and a device-like subprocess.

The agent runs on devices without torch, MLflow or cryptography, so its behaviour tests start it in
a subprocess where those imports fail (:data:`BLOCKED`). The test process itself plays the
publisher: it builds models with ``onnx``, signs with ``cryptography`` and writes through the
agent's own :class:`~edgeqat.agent.store.Store`, as the controller does.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgeqat.agent.keys import public_key_pem
from edgeqat.agent.manifest import MANIFEST_KEY, Manifest, Preprocessing, ReleasePayload, release_key
from edgeqat.agent.store import Store

BLOCKED = ("torch", "lightning", "mlflow", "hydra", "omegaconf", "timm", "onnx", "cryptography")
PRELUDE = f"""
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is not installed on the device (blocked by the agent tests)")
        return None
sys.meta_path.insert(0, _Blocked())
"""
CLASSES = ("zero", "one", "two")
PRE = Preprocessing(channels=1, image_size=8, mean=(0.5,), std=(0.25,), class_names=CLASSES)


def device_command(code: str) -> list[str]:
    """``python -c`` running ``code`` where the heavy packages cannot be imported."""
    return [sys.executable, "-c", PRELUDE + code]


def agent_command(args: list[str]) -> list[str]:
    return device_command(f"from edgeqat.agent.cli import main\nsys.exit(main({args!r}))")


def device_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without S3/MLflow settings, plus ``extra``; one thread for ORT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "EDGEQAT_AGENT_"))}
    return {**env, "OMP_NUM_THREADS": "1", **(extra or {})}


def run_agent(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``edgeqat agent ARGS`` on the "device"; returns the finished process (text output)."""
    return subprocess.run(agent_command(args), cwd=cwd, env=device_env(env), capture_output=True, text=True,
                          timeout=timeout)


def tiny_classifier(seed: int) -> bytes:
    """``input [N,1,8,8] -> Flatten -> Gemm -> output [N,3]``, opset 17; weights from ``seed``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((64, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "B"], ["output"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


class Signer:
    """An Ed25519 key pair made with ``cryptography`` (the publisher's library, not the device's)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._key = Ed25519PrivateKey.generate()
        public = self._key.public_key()
        self.public_raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        assert self.pem.decode() == public_key_pem(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def write_pem(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.pem)
        return path

    def manifest(self, payload: ReleasePayload) -> bytes:
        return Manifest.signed(payload, self.sign, self.public_raw).to_bytes()


@dataclass(frozen=True)
class Release:
    payload: ReleasePayload
    manifest: bytes


def make_payload(model: bytes, version: str, target: str = "local") -> ReleasePayload:
    sha = hashlib.sha256(model).hexdigest()
    return ReleasePayload(target=target, model_name="tiny", version=version, model_key=release_key(version, sha),
                          sha256=sha, size_bytes=len(model), preprocessing=PRE,
                          published_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), run_id="r" * 32,
                          source=f"models:/m-{version}", metrics={"test/acc_int8": 0.9})


def publish(store: Store, signer: Signer, model: bytes, version: str, *, target: str = "local",
            upload: bytes | None = None, **changes: object) -> Release:
    """Upload ``upload`` (default ``model``) and a manifest for ``model`` signed by ``signer``; the model first."""
    payload = replace(make_payload(model, version, target), **changes)  # type: ignore[arg-type]
    store.put(payload.model_key, model if upload is None else upload)
    manifest = signer.manifest(payload)
    store.put(MANIFEST_KEY, manifest)
    return Release(payload, manifest)


def png_bytes(image: np.ndarray, filters: tuple[int, ...] = (0,), colour: int | None = None,
              depth: int = 8) -> bytes:
    """A PNG written by hand: row ``y`` uses filter ``filters[y % len(filters)]``; 8- or 16-bit samples."""
    h, w, c = image.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c] if colour is None else colour
    samples = image.astype(">u2") * 257 if depth == 16 else image.astype(np.uint8)
    rows = samples.reshape(h, -1).view(np.uint8).reshape(h, -1).astype(np.int64)
    bpp = max(1, c * depth // 8)
    raw = bytearray()
    prev = np.zeros(rows.shape[1], np.int64)
    for y in range(h):
        kind, row = filters[y % len(filters)], rows[y]
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(row)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - ul
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
        raw += bytes([kind]) + ((row - pred) % 256).astype(np.uint8).tobytes()
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")
