"""Publish a gated version to a target: the model file, then a signed ``manifest.json``, written last.

Layout under the target's location (a directory or ``s3://bucket/prefix/``)::

    manifest.json                          what devices run now (replaced atomically, last)
    releases/v<N>-<sha12>/model.onnx       every release is kept: a rollback only rewrites the manifest
    releases/v<N>-<sha12>/manifest.json    the manifest as first published (audit trail)
    heartbeats/<agent_id>.json             written by the agents

A device never sees a manifest whose file is not there yet, and one put replaces the manifest, so
it reads either the old release or the new one, never half of each.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeqat.agent.manifest import MANIFEST_KEY, Preprocessing, ReleasePayload, release_key
from edgeqat.deploy.gate import Candidate
from edgeqat.deploy.signing import ManifestSigner


def publish_release(store: Any, target_name: str, candidate: Candidate, model_path: Path,
                    preprocessing: dict[str, Any], metrics: dict[str, float], signer: ManifestSigner) -> ReleasePayload:
    """Upload the file (unless that release is already there), then the signed manifest."""
    sha = candidate.sha256 or ""
    key = release_key(candidate.version, sha)
    folder = key.rsplit("/", 1)[0]
    if key not in set(store.list(folder + "/")):
        store.put(key, model_path.read_bytes())
    payload = ReleasePayload(
        target=target_name, model_name=candidate.model_name, version=candidate.version, model_key=key,
        sha256=sha, size_bytes=model_path.stat().st_size, preprocessing=Preprocessing.from_dict(preprocessing),
        published_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), run_id=candidate.run_id,
        source=candidate.source, metrics=metrics)
    manifest = signer.sign(payload)
    store.put(f"{folder}/manifest.json", manifest)
    store.put(MANIFEST_KEY, manifest)
    return payload
