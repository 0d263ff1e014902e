"""Automatic float fallback: keep the layers INT8 hurts most in float, within an accuracy target and a budget.

Greedy over the sensitivity report (most accuracy recovered first): each candidate set is written
with :func:`~edgeqat.quant.sensitivity.leave_float`, timed in ORT (batch 1) and evaluated, because
neither accuracy nor latency adds up layer by layer. A layer whose extra latency would break the
budget is skipped for the next one, one that recovers nothing alone is not tried, one whose gain
over the layers already chosen could be noise is rejected. Every decision is kept with its reason,
so the report says what was chosen and why.

"Could be noise" is a paired test on the same images (McNemar): of the images the candidate set and
the current set classify differently, the candidate must fix more than it breaks by ``min_z``
standard errors, ``fixed - broken > min_z * sqrt(fixed + broken)``. Without it a greedy search over
dozens of layers keeps whichever happen to gain a few validation images: on MobileNetV3 and
Fashion-MNIST (2,000 validation images) it kept 5 layers for +1.75 pt on validation and +0.35 pt
on the test split.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeqat.quant.sensitivity import SensitivityReport, leave_float

__all__ = ["FallbackBudget", "FallbackResult", "choose_fallback", "significant_gain"]


@dataclass(frozen=True)
class FallbackBudget:
    """The accuracy target (largest drop vs FP32) and what reaching it may cost."""

    max_drop: float
    max_latency_pct: float | None = None
    max_layers: int | None = None
    min_z: float = 2.0  # a layer's paired gain must exceed this many standard errors (0: any gain)


@dataclass
class FallbackResult:
    """What the fallback chose, and the accuracy and latency before and after (validation split)."""

    target_accuracy: float
    accuracy_before: float
    accuracy_after: float
    latency_ms_before: float
    latency_ms_after: float
    chosen: list[str] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)  # {"layer", "action", "reason"} in the order tried

    @property
    def met(self) -> bool:
        return self.accuracy_after >= self.target_accuracy

    @property
    def extra_latency_pct(self) -> float:
        return (self.latency_ms_after / self.latency_ms_before - 1) * 100

    def to_dict(self) -> dict:
        return {**asdict(self), "met": self.met, "extra_latency_pct": self.extra_latency_pct}

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def significant_gain(before: np.ndarray, after: np.ndarray, min_z: float) -> tuple[int, int, bool]:
    """Images ``after`` fixes and breaks (per-image correctness, same images) and whether the net gain
    exceeds ``min_z`` standard errors (McNemar: under no effect, fixed - broken has variance fixed + broken)."""
    fixed, broken = int((after & ~before).sum()), int((before & ~after).sum())
    return fixed, broken, fixed - broken > min_z * (fixed + broken) ** 0.5


def choose_fallback(
    int8_path: str | Path,
    float_weights: Mapping[str, np.ndarray],
    report: SensitivityReport,
    images: np.ndarray,
    labels: np.ndarray,
    fp32_accuracy: float,
    budget: FallbackBudget,
    out: str | Path,
    latency: dict | None = None,
) -> FallbackResult:
    """Write ``out``: ``int8_path`` with the chosen layers float (a copy of it when none is needed).

    Args:
        report: :func:`~edgeqat.quant.sensitivity.layer_sensitivity` on the same ``images``.
        fp32_accuracy: the FP32 model's accuracy on ``images``; the target is that minus ``budget.max_drop``.
        latency: keyword arguments of ``measure_latency_ms`` (``threads``, ``iters``); the input is one image.
    """
    from edgeqat.quant.verify import measure_latency_ms, run_onnx

    model = onnx.load(str(int8_path))
    labels = np.asarray(labels).ravel()
    shape = (1, *images.shape[1:])
    timing = dict(latency or {})

    def correct(path: Path | str) -> np.ndarray:
        return run_onnx(path, images).argmax(1) == labels

    base_ms = measure_latency_ms(int8_path, shape, **timing)
    best_correct = correct(int8_path)
    result = FallbackResult(fp32_accuracy - budget.max_drop, float(best_correct.mean()), float(best_correct.mean()),
                            base_ms, base_ms)
    best = model
    with tempfile.TemporaryDirectory() as tmp:
        candidate_path = Path(tmp) / "candidate.onnx"
        for row in report.layers:
            if result.met:
                break
            if row.recovered <= 0:
                result.decisions.append({"layer": row.layer, "action": "not tried",
                                         "reason": "left float alone it recovers nothing"})
                continue
            if budget.max_layers is not None and len(result.chosen) >= budget.max_layers:
                result.decisions.append({"layer": row.layer, "action": "stopped",
                                         "reason": f"quant.fallback.max_layers={budget.max_layers} reached"})
                break
            candidate = leave_float(model, [*result.chosen, row.layer], float_weights, report.scope)
            onnx.save(candidate, str(candidate_path))
            ms = measure_latency_ms(candidate_path, shape, **timing)
            extra = (ms / base_ms - 1) * 100
            if budget.max_latency_pct is not None and extra > budget.max_latency_pct:
                result.decisions.append({"layer": row.layer, "action": "skipped",
                                         "reason": f"+{extra:.1f} % latency > quant.fallback.max_latency_pct="
                                                   f"{budget.max_latency_pct:g}"})
                continue
            now_correct = correct(candidate_path)
            acc = float(now_correct.mean())
            fixed, broken, significant = significant_gain(best_correct, now_correct, budget.min_z)
            if not significant:
                result.decisions.append({"layer": row.layer, "action": "rejected",
                                         "reason": f"with the layers already float it fixes {fixed} images and breaks "
                                                   f"{broken} ({result.accuracy_after:.4f} -> {acc:.4f}): within "
                                                   f"{budget.min_z:g} standard errors of no gain"})
                continue
            result.decisions.append({"layer": row.layer, "action": "float",
                                     "reason": f"recovers {row.recovered * 100:+.2f} pt alone; with the set: accuracy "
                                               f"{result.accuracy_after:.4f} -> {acc:.4f} ({fixed} images fixed, "
                                               f"{broken} broken), latency {extra:+.1f} %"})
            result.chosen.append(row.layer)
            result.accuracy_after, result.latency_ms_after, best, best_correct = acc, ms, candidate, now_correct
    onnx.save(best, str(out))
    return result
