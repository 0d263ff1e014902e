"""A fast subset of the model-coverage table: timm families through the whole INT8 path, failures named.

The full table (every family in ``FAMILIES``) is ``benchmarks/model_coverage.py``; these ten were
picked for speed and for spread: a plain residual net, inverted residuals with SE, hard-swish and
SiLU (EfficientNet-B0), ghost modules, universal inverted bottlenecks, torchvision's channel shuffle,
and two whose shape arithmetic torch's symbolic solver gives up on, so their image size is fixed:
VoVNet when it is captured for QAT, DLA when it is exported (``quant.shapes``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeqat.pipeline.coverage import FAMILIES, CoverageSettings, Stage, check_model

FAST = ["resnet", "mobilenetv2", "mobilenetv3", "mobilenetv4", "efficientnet", "lcnet", "ghostnet", "shufflenet",
        "dla", "vovnet"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAST)
def test_family_takes_the_whole_int8_path(family: str, tmp_path: Path) -> None:
    result = check_model(FAMILIES[family], family, workdir=tmp_path)
    assert result.passed, result.reason
    assert result.stage is Stage.DONE and result.reason is None
    assert result.qlinearconv > 0 and result.float_conv == 0, "every convolution runs as an integer kernel"
    assert result.within_step_fraction is not None and result.within_step_fraction >= 0.9
    assert result.top1_agreement is not None and result.top1_agreement >= 0.8  # random inputs, near-tied logits
    assert (tmp_path / result.model / "int8.onnx").is_file()


@pytest.mark.slow
def test_saturating_weights_fail_the_check_exactly_where_the_cpu_saturates(tmp_path: Path) -> None:
    """Forced full-range int8 weights: the same file is exact on VNNI/AMX/ARM and wrong on AVX2 (issue 11)."""
    from edgeqat.quant import detect_cpu

    result = check_model(FAMILIES["resnet"], workdir=tmp_path, settings=CoverageSettings(weight_range="int8"))
    if detect_cpu().isa.saturates_u8s8:
        assert not result.passed and result.stage is Stage.AGREEMENT
        assert result.within_step_fraction < 0.9 and result.max_step_drift > 1
        assert "quant.weight_range=auto" in result.reason
    else:
        assert result.passed and result.max_step_drift <= 1.001


def test_unknown_model_stops_at_build_with_its_suggestion(tmp_path: Path) -> None:
    result = check_model("resnet181", workdir=tmp_path)
    assert not result.passed and result.stage is Stage.BUILD
    assert "Did you mean" in result.reason and "resnet18" in result.reason


class _DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:
            x = x.relu()
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_is_a_named_failure_with_its_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgeqat.models.create_backbone", lambda name, **kw: _DataDependent())
    result = check_model("data_dependent", workdir=tmp_path)
    assert not result.passed and result.stage is Stage.PREPARE
    assert "torch.export cannot trace" in result.reason and "keep this model FP32" in result.reason
    assert "\n" not in result.reason
    assert not list(tmp_path.rglob("*.onnx")), "nothing is exported for a model that failed"


@pytest.mark.parametrize("source_steps, named", [(1, "1-step rounding ties only (at Add; 1 tensors), which the "
                                                    "layers after them grow to 7 output steps: not a kernel error"),
                                                   (40, "a kernel computes other integers than the file defines "
                                                        "(up to 40 steps at Add)")])
def test_a_drift_failure_names_its_cause(monkeypatch: pytest.MonkeyPatch, source_steps: int, named: str) -> None:
    """Exact weights and still off: ties grown by the network are told apart from a wrong kernel."""
    import edgeqat.quant
    from edgeqat.pipeline.coverage import _drift_cause
    from edgeqat.quant.drift import DriftReport, DriftSource

    report = DriftReport(4, 100, 2, 7.0, [DriftSource("q_20", "Add", 3, source_steps, 2)])
    monkeypatch.setattr(edgeqat.quant, "localize_drift", lambda path, images: report)
    assert named in _drift_cause(Path("int8.onnx"), None)
