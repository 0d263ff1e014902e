"""The gate: a version's INT8 file, run in the target's runtime with the target's settings, vs its budgets.

Nothing ships on the registry's word alone: the file is downloaded, its sha256 checked against the
version's tag, its accuracy measured on the target's evaluation set (by default the run's own test
split, rebuilt from the run's logged ``config/config.yaml``), its p50/p95 latency at batch 1 and its
size compared with the budgets. Latency depends on the CPU's int8 instructions (AMX, VNNI, AVX2), so
a latency budget is only called met when the controller's CPU is of the kind the target names.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeqat.deploy.runtimes import load_runtime
from edgeqat.deploy.targets import DeployTarget
from edgeqat.quant.isa import Isa, detect_cpu, resolve_target_isa
from edgeqat.registry.metadata import float_tag, sha256_file


@dataclass(frozen=True)
class Candidate:
    """A registered version a target should run."""

    model_name: str
    version: str
    source: str  # models:/<model_id>
    run_id: str
    tags: dict[str, str]

    @classmethod
    def from_model_version(cls, mv: Any) -> Candidate:
        return cls(mv.name, str(mv.version), mv.source, mv.run_id or "", dict(mv.tags))

    @property
    def sha256(self) -> str | None:
        return self.tags.get("sha256")


@dataclass
class GateReport:
    """What the gate measured and why it decided as it did (logged as the deployment run's report)."""

    passed: bool
    reasons: list[str]
    sha256: str
    accuracy: float | None = None
    acc_drop: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    size_mb: float | None = None
    n_eval: int = 0
    eval_source: str = ""
    runtime: str = ""
    runtime_version: str = ""
    threads: int = 1
    cpu: str = ""
    isa: str = ""
    target_isa: str = ""
    budgets: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "all budgets met"

    def metrics(self) -> dict[str, float]:
        keys = ("accuracy", "acc_drop", "latency_p50_ms", "latency_p95_ms", "size_mb")
        return {k: float(getattr(self, k)) for k in keys if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


@dataclass(frozen=True)
class GatedModel:
    """The gate's verdict and, when it got that far, the checked file and its preprocessing."""

    report: GateReport
    model_path: Path | None
    preprocessing: dict[str, Any] | None


def fetch_model(tracking_uri: str, candidate: Candidate, dest: Path) -> tuple[Path, dict[str, Any]]:
    """The version's ``model.onnx`` and the preprocessing in its MLmodel metadata."""
    import mlflow.artifacts
    import yaml

    from mlflow.tracking import MlflowClient

    # models:/<id> resolves through the *global* tracking URI in MLflow; resolve it with ours.
    location = MlflowClient(tracking_uri).get_logged_model(candidate.source.removeprefix("models:/")).artifact_location
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dest),
                                                     tracking_uri=tracking_uri))
    meta = yaml.safe_load((local / "MLmodel").read_text()).get("metadata") or {}
    return local / "model.onnx", (meta.get("edgeqat") or {}).get("preprocessing") or {}


def evaluation_set(tracking_uri: str, target: DeployTarget, run_id: str,
                   pre: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """Images normalised as the *model* expects them, with labels, and where they came from."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if target.gate.eval_data is None:
        import mlflow.artifacts

        path = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/config/config.yaml",
                                                   tracking_uri=tracking_uri)
        data_cfg = OmegaConf.load(path).data
        source = f"run {run_id} test split ({data_cfg.source})"
    else:
        from edgeqat.config import compose_config

        data_cfg = compose_config(list(target.gate.eval_data)).data
        source = f"{' '.join(target.gate.eval_data)} test split"
    data_cfg.image_size, data_cfg.in_chans = int(pre["image_size"]), int(pre["channels"])
    dm = instantiate(data_cfg)
    dm.setup()
    images, labels = dm.split_arrays("test", target.gate.eval_limit)
    # Undo the datamodule's normalisation, apply the model's (identical for the run's own split).
    dm_mean, dm_std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in (dm.normalization.mean,
                                                                                 dm.normalization.std))
    mean, std = (np.asarray(pre[k], np.float32).reshape(1, -1, 1, 1) for k in ("mean", "std"))
    images = ((images * dm_std + dm_mean) - mean) / std
    return images.astype(np.float32), np.asarray(labels), source


def run_gate(tracking_uri: str, target: DeployTarget, candidate: Candidate, workdir: Path) -> GatedModel:
    """Download, check, measure and judge ``candidate`` for ``target`` (never raises for a bad model)."""
    g = target.gate
    cpu = detect_cpu()
    target_isa = resolve_target_isa(g.isa)
    report = GateReport(passed=False, reasons=[], sha256=candidate.sha256 or "", runtime=g.runtime,
                        threads=g.threads, cpu=cpu.model, isa=cpu.isa.value, target_isa=target_isa.value,
                        budgets=asdict(g))
    if not candidate.sha256:
        report.reasons.append("the version has no sha256 tag: register it with edgeqat (or tag sha256)")
        return GatedModel(report, None, None)
    dest = Path(tempfile.mkdtemp(prefix=f"gate-{candidate.version}-", dir=workdir))
    model_path, pre = fetch_model(tracking_uri, candidate, dest)
    actual = sha256_file(model_path)
    if actual != candidate.sha256:
        report.reasons.append(f"sha256 mismatch: version tag {candidate.sha256[:12]}, file {actual[:12]}")
        return GatedModel(report, None, None)
    if not pre:
        report.reasons.append("the model has no preprocessing metadata (metadata.edgeqat.preprocessing)")
        return GatedModel(report, None, None)
    mismatch = arithmetic_mismatch(model_path, target_isa)
    if mismatch:
        report.reasons.append(mismatch)
        return GatedModel(report, None, None)
    report.size_mb = model_path.stat().st_size / 2**20
    images, labels, report.eval_source = evaluation_set(tracking_uri, target, candidate.run_id, pre)
    report.n_eval = len(labels)
    try:  # a file the runtime cannot load or run is the model's fault: a verdict, not a retry
        runtime = load_runtime(g.runtime, model_path, g.threads)
        report.runtime_version = runtime.version
        report.accuracy = float((runtime.predict(images).argmax(1) == labels).mean())
        lat = runtime.latencies_ms((1, int(pre["channels"]), int(pre["image_size"]), int(pre["image_size"])),
                                   g.latency_iters)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        report.reasons.append(f"{g.runtime} could not run the model: {' '.join(str(e).split())[:300]}")
        return GatedModel(report, None, None)
    report.latency_p50_ms, report.latency_p95_ms = float(np.percentile(lat, 50)), float(np.percentile(lat, 95))
    report.reasons = budget_failures(report, g, float_tag(candidate.tags, "acc_fp32"), same_cpu=target_isa is cpu.isa)
    report.passed = not report.reasons
    (dest / "gate_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    return GatedModel(report, model_path, pre)


def arithmetic_mismatch(model_path: Path, target_isa: Isa) -> str | None:
    """Why the file would compute other integers on the target's CPU, or None.

    On AVX2 without VNNI, ORT's dense u8s8 kernels add product pairs into a saturating int16: int8
    weights beyond |64| (a file exported for a VNNI/AMX CPU) are off by up to hundreds of steps
    there, whatever this controller's own CPU measures (``quant/isa.py``).
    """
    if not target_isa.saturates_u8s8:
        return None
    import onnx

    from edgeqat.quant.weight_format import dense_weight_extremes

    extremes = dense_weight_extremes(onnx.load(str(model_path)), int8_only=True)
    worst = max(extremes.values(), default=0)
    if worst <= target_isa.exact_weight_bound:
        return None
    return (f"int8 weights up to |{worst}| in {sum(v > target_isa.exact_weight_bound for v in extremes.values())} "
            f"dense layers saturate ORT's u8s8 kernels on {target_isa.value} CPUs (exact up to "
            f"|{target_isa.exact_weight_bound}|): re-export with quant.target_isa={target_isa.value}")


def budget_failures(report: GateReport, g: Any, acc_fp32: float | None, *, same_cpu: bool) -> list[str]:
    """One sentence per budget the measured figures miss."""
    out = []
    if report.accuracy is not None and report.accuracy < g.accuracy_floor:
        out.append(f"accuracy {report.accuracy:.4f} < floor {g.accuracy_floor:.4f} on {report.eval_source}")
    if g.max_drop is not None and acc_fp32 is not None and report.accuracy is not None:
        report.acc_drop = acc_fp32 - report.accuracy
        if report.acc_drop > g.max_drop:
            out.append(f"accuracy drop {report.acc_drop:.4f} vs FP32 {acc_fp32:.4f} > max_drop {g.max_drop:.4f}")
    if g.size_mb is not None and report.size_mb is not None and report.size_mb > g.size_mb:
        out.append(f"size {report.size_mb:.2f} MB > budget {g.size_mb:.2f} MB")
    if g.p95_latency_ms is not None:
        if not same_cpu:
            out.append(f"the p95 latency budget is for {report.target_isa} CPUs and this controller runs on "
                       f"{report.isa} ({report.cpu}): gate on a {report.target_isa} machine or set gate.isa")
        elif report.latency_p95_ms is not None and report.latency_p95_ms > g.p95_latency_ms:
            out.append(f"p95 latency {report.latency_p95_ms:.2f} ms > budget {g.p95_latency_ms:.2f} ms "
                       f"({report.threads} thread(s), {report.isa})")
    return out
