"""Deploy targets load typed and checked; the gate names every budget a version misses."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeqat.deploy.gate import GateReport, budget_failures
from edgeqat.deploy.targets import GateConfig, TargetError, list_targets, load_target


def test_the_default_target_needs_no_setup() -> None:
    assert "local" in list_targets()
    t = load_target("local")
    assert t.follows.alias == "production" and t.publish.startswith("s3://edgeqat-artifacts/deployments/local")
    assert t.gate.runtime == "onnxruntime" and t.gate.batch == 1


@pytest.mark.parametrize("name, overrides, message", [
    ("lcoal", [], "Did you mean 'local'"),
    ("local", ["gate.threadz=2"], "threadz"),
    ("local", ["gate.threads=0"], "gate.threads >= 1"),
    ("local", ["gate.accuracy_floor=high"], "accuracy_floor"),
    ("local", ["follows.alias=null", "follows.stage=null"], "follows nothing"),
])
def test_bad_targets_name_the_fix(name: str, overrides: list[str], message: str) -> None:
    with pytest.raises(TargetError, match=message):
        load_target(name, overrides)


def test_a_target_file_outside_the_package(tmp_path: Path) -> None:
    path = tmp_path / "edge-box.yaml"
    path.write_text("follows: {alias: staging, stage: null}\npublish: /srv/releases\ngate: {isa: avx2}\n")
    t = load_target(str(path))
    assert (t.name, t.follows.alias, t.publish, t.gate.isa) == ("edge-box", "staging", "/srv/releases", "avx2")


def _report(**kw: float) -> GateReport:
    base = dict(passed=False, reasons=[], sha256="x", accuracy=0.9, latency_p95_ms=2.0, size_mb=1.0,
                eval_source="test split", isa="amx", target_isa="amx", cpu="cpu")
    return GateReport(**{**base, **kw})


def test_budgets_met() -> None:
    g = GateConfig(accuracy_floor=0.8, max_drop=0.02, p95_latency_ms=5.0, size_mb=2.0)
    assert budget_failures(_report(), g, acc_fp32=0.91, same_cpu=True) == []


def test_every_missed_budget_is_named() -> None:
    g = GateConfig(accuracy_floor=0.95, max_drop=0.01, p95_latency_ms=1.0, size_mb=0.5)
    failures = budget_failures(_report(), g, acc_fp32=0.99, same_cpu=True)
    assert [f.split()[0] for f in failures] == ["accuracy", "accuracy", "size", "p95"]


def test_a_latency_budget_is_never_called_met_on_another_kind_of_cpu() -> None:
    g = GateConfig(p95_latency_ms=100.0)
    failures = budget_failures(_report(isa="amx", target_isa="avx2"), g, acc_fp32=None, same_cpu=False)
    assert len(failures) == 1 and "avx2" in failures[0] and "amx" in failures[0]


def test_another_evaluation_set_is_fed_with_the_models_own_normalisation() -> None:
    """``gate.eval_data``: any data source, but normalised as the model expects, not as that dataset would be."""
    from edgeqat.deploy.gate import evaluation_set

    target = load_target("local", ["gate.eval_data=[data=digits]", "gate.eval_limit=64"])
    pre = {"image_size": 12, "channels": 1, "mean": [0.0], "std": [1.0]}  # a model fed raw [0, 1] pixels
    images, labels, source = evaluation_set("unused://", target, "no-run", pre)
    assert images.shape == (64, 1, 12, 12) and labels.shape == (64,) and "data=digits" in source
    assert images.min() >= -1e-5 and images.max() <= 1 + 1e-5 and images.max() > 0.5
