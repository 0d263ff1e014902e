"""``localize_drift``: a saturating kernel shows as many-step sources, rounding ties as one-step ones."""

from __future__ import annotations

import pytest

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
