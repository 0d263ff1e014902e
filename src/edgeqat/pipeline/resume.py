"""``edgeqat train resume=<run_id>``: continue a job that stopped with no handler run (SIGKILL, OOM,
a lost machine) in the same MLflow run, from the newest full-state checkpoint.

What the first attempt left decides where the second starts: ``checkpoints/fp32/metadata.json``
in the run means the FP32 fit finished (its best weights are there too), so QAT continues; the
phase in progress continues from its ``last.ckpt``, the local copy when the server already has
every metric up to it, else the one the run uploaded (``tracking.checkpoint_interval_s``). Each
metric's highest step on the server is passed to the recorder, which drops what the replayed part
of an epoch logs again: each step of each metric is logged once over both attempts.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqat.errors import EdgeqatError

OVERRIDES_TAG = "edgeqat.overrides"
RESUMED_TAG = "edgeqat.resumed_from"


class ResumeError(EdgeqatError, ValueError):
    """The run cannot be resumed as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed job starts, and what its first attempt already logged."""

    run_id: str
    phase: str  # the phase in progress: fp32 | qat | export (the FP32 fit is done and nothing else trains)
    checkpoint: Path | None  # its full trainer state (None: the phase starts over)
    source: str  # where the checkpoint came from: local | run artifacts | none
    fp32_best: Path | None = None  # after the FP32 fit: its best weights (what QAT or the export starts from)
    fp32_steps: int = 0  # after the FP32 fit: its steps (QAT's steps continue after them)
    fp32_metrics: dict[str, float] = field(default_factory=dict)  # after the FP32 fit: its test results
    logged_through: dict[str, int] = field(default_factory=dict)  # metric -> the highest step the run has

    def describe(self) -> str:
        if self.checkpoint is None:
            return f"{self.phase}: start of the phase (no checkpoint)"
        return f"{self.phase}: {self.source} checkpoint after step {_global_step(self.checkpoint)}"


def resume_overrides(overrides: Sequence[str], tracking_uri: str | None) -> list[str]:
    """With ``resume=<run_id>`` among ``overrides``: that run's own overrides, then these (which win)."""
    from edgeqat.sweep.plan import override_key

    ids = [o.split("=", 1)[1] for o in overrides if override_key(o) == "resume"]
    if not ids or ids[-1] in ("", "null"):
        return list(overrides)
    run = _get_run(_client(tracking_uri), ids[-1])
    recorded = shlex.split(run.data.tags.get(OVERRIDES_TAG, ""))
    return [o for o in recorded if override_key(o) != "resume"] + list(overrides)


def find_resume_point(client: Any, run_id: str, run_dir: Path, quant_mode: str) -> ResumePoint:
    """Read the run (its metrics, checkpoints and tags) and the local files to decide the start."""
    run = _get_run(client, run_id)
    logged = {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
    fp32_files = _artifacts(client, run_id, "checkpoints/fp32")
    if "checkpoints/fp32/metadata.json" not in fp32_files:
        ckpt, source = _last_checkpoint(client, run_id, run_dir, "fp32", logged, 0)
        return ResumePoint(run_id, "fp32", ckpt, source, logged_through=logged)
    fp32_dir = run_dir / "checkpoints" / "fp32"
    fp32_dir.mkdir(parents=True, exist_ok=True)
    meta = json.loads(Path(client.download_artifacts(run_id, "checkpoints/fp32/metadata.json", str(fp32_dir)))
                      .read_text())
    best = fp32_dir / "best.ckpt"
    if not best.exists():
        client.download_artifacts(run_id, "checkpoints/fp32/best.ckpt", str(fp32_dir))
    steps = int(meta["global_step"])
    fp32_metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    if quant_mode != "qat_int8":
        return ResumePoint(run_id, "export", None, "none", best, steps, fp32_metrics, logged)
    ckpt, source = _last_checkpoint(client, run_id, run_dir, "qat", logged, steps)
    return ResumePoint(run_id, "qat", ckpt, source, best, steps, fp32_metrics, logged)


def _last_checkpoint(client: Any, run_id: str, run_dir: Path, phase: str, logged: dict[str, int],
                     step_offset: int) -> tuple[Path | None, str]:
    """The local ``last.ckpt`` when every epoch in it reached the server, else the uploaded one."""
    local = run_dir / "checkpoints" / phase / "last.ckpt"
    # val/acc is logged at each epoch's last step: if the server has it there, it has the epoch
    if local.exists() and _global_step(local) - 1 + step_offset <= logged.get("val/acc", -1):
        return local, "local"
    if f"checkpoints/{phase}/last.ckpt" in _artifacts(client, run_id, f"checkpoints/{phase}"):
        local.parent.mkdir(parents=True, exist_ok=True)
        client.download_artifacts(run_id, f"checkpoints/{phase}/last.ckpt", str(local.parent))
        return local, "run artifacts"
    if local.exists():  # newer than the server's metrics, and nothing uploaded: still the best there is
        return local, "local"
    return None, "none"


def _global_step(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _artifacts(client: Any, run_id: str, path: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def _client(tracking_uri: str | None) -> Any:
    import logging

    from mlflow.tracking import MlflowClient

    from edgeqat.tracking import resolve_tracking_uri

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # a refusal is one line, not the store's set-up INFO
    return MlflowClient(resolve_tracking_uri(tracking_uri))


def _get_run(client: Any, run_id: str) -> Any:
    try:
        run = client.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MLflow raises its own types for a missing run
        raise ResumeError(f"resume={run_id}: no such run at {client.tracking_uri}: pass the id of the run "
                          "to continue (the run page shows it)") from e
    if run.info.status == "FINISHED":
        raise ResumeError(f"resume={run_id}: that run already FINISHED: nothing to resume")
    return run
