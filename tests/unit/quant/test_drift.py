"""``localize_drift``: a saturating kernel shows as many-step sources, rounding ties as one-step ones."""

from __future__ import annotations

import pytest
import torch

from edgeqat.quant import detect_cpu, localize_drift

CPU = detect_cpu()


@pytest.mark.parametrize("model", ["test_resnet", "tiny_mobile"])
def test_the_auto_format_departs_from_its_definition_by_rounding_ties_at_most(artifacts, model: str) -> None:
    """What this CPU exports by default computes each activation as the file defines it, up to ties."""
    a = artifacts[model]
    report = localize_drift(a.int8_onnx, a.images)
    assert report.n_images == len(a.images) and report.activations_per_image > 1000
    assert report.max_source_steps <= 1, report.sources
    # Ties need a value within float error of k + 1/2: a few per million activations, never a pattern.
    assert sum(s.elements for s in report.sources) <= 1e-4 * report.n_images * report.activations_per_image


def test_forced_int8_names_the_saturating_convs_only_where_the_cpu_saturates(artifacts) -> None:
    a = artifacts["test_resnet:int8"]
    report = localize_drift(a.int8_onnx, a.images)
    wide = [s for s in report.sources if s.max_steps > 1]
    if CPU.isa.saturates_u8s8:  # AVX2 / AVX-512 without VNNI: vpmaddubsw's int16 pairs
        assert wide, f"{CPU.isa.value}: int8 weights should saturate here, got {report.sources}"
        assert all("Conv" in s.ops for s in wide), wide  # the dense convs, nothing downstream of them
        assert report.output_max_steps > 1
    else:  # VNNI, AMX, ARM dot products: int32 accumulation, exact
        assert not wide, f"{CPU.isa.value} accumulates in int32, yet: {wide}"


class _Recorder:
    def __init__(self) -> None:
        self.dicts: dict[str, dict] = {}

    def log_dict(self, value: dict, path: str) -> None:
        self.dicts[path] = value


@pytest.mark.parametrize("weight_range", ["auto", "int8"])
def test_a_run_explains_drift_beyond_one_step(artifacts, weight_range: str) -> None:
    """The pipeline logs the sources (``int8/drift_sources.json``) exactly when the output drifts > 1 step."""
    from edgeqat.pipeline.verify import explain_drift
    from edgeqat.quant import evaluate_onnx

    a = artifacts[f"test_resnet:{weight_range}"]
    a.prepared.eval()
    with torch.no_grad():
        reference = a.prepared(torch.from_numpy(a.images)).numpy()
    result = evaluate_onnx(a.int8_onnx, a.images, a.labels, reference_logits=reference)
    recorder = _Recorder()
    metrics = explain_drift(recorder, a.int8_onnx, a.images, result)
    if result.max_step_drift > 1.001:  # forced int8 where the CPU saturates
        report = recorder.dicts["int8/drift_sources.json"]
        assert metrics == {"int8/max_source_steps": report["max_source_steps"]} and report["max_source_steps"] >= 1
        if weight_range == "int8" and CPU.isa.saturates_u8s8:
            assert report["max_source_steps"] > 1
        assert report["sources"] and report["n_images"] == len(a.images)
    else:
        assert metrics == {} and recorder.dicts == {}
        assert weight_range == "auto" or not CPU.isa.saturates_u8s8
