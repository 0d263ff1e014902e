"""Automatic float fallback: keep the layers INT8 hurts most in float, within an accuracy target and a budget.

Greedy over the sensitivity report (most accuracy recovered first): each candidate set is written
with :func:`~edgeqat.quant.sensitivity.leave_float`, timed in ORT (batch 1) and evaluated, because
neither accuracy nor latency adds up layer by layer. A layer whose extra latency would break the
budget is skipped for the next one, one that recovers nothing alone is not tried, one whose gain
over the layers already chosen could be noise is rejected. Every decision is kept with its reason,
so the report says what was chosen and why.

When the loss is spread (MobileNetV3: ~130 rounded activations, none worth more than 0.4 pt of
the 1.9 lost), no single candidate clears the gate and the greedy pass keeps nothing. Then all the
remaining candidates are tried *as sets*, in the report's order (most recovered alone first): the
top 2, 4, 8, ... together, one file and one paired test per set, and the smallest top-k meeting the
target with a gain beyond noise (the same gate, on the set as a whole) is found by bisection
(accuracy grows with k, not strictly); none is kept when no set within the budget is that good.

"Could be noise" is a paired test on the same images (McNemar): of the images the candidate set and
the current set classify differently, the candidate must fix more than it breaks by ``min_z``
standard errors, ``fixed - broken > min_z * sqrt(fixed + broken)``. Without it a greedy search over
dozens of layers keeps whichever happen to gain a few validation images: on MobileNetV3 and
Fashion-MNIST (2,000 validation images) it kept 5 layers for +1.75 pt on validation and +0.35 pt
on the test split.

"Within ``max_drop``" is the point estimate on the validation split unless ``target_z`` asks for
more: then the paired drop vs FP32 plus ``target_z`` standard errors must be within it (1.64: a
one-sided 95 % bound). A set that meets 0.5 pt on 6,000 images by its point estimate lost 0.43 to
0.93 pt on the 10,000 test images (MobileNetV3 on Fashion-MNIST): a target meant for unseen images
needs that margin, and a larger split to choose on (``data.extra_val_samples``). Chosen on 24,000
images with ``target_z=1.64``, the same five runs lost 0.13 to 0.34 pt on test (README).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeqat.quant.sensitivity import LayerSensitivity, SensitivityReport, leave_float

__all__ = ["FallbackBudget", "FallbackResult", "choose_fallback", "paired_drop_margin", "significant_gain"]


@dataclass(frozen=True)
class FallbackBudget:
    """The accuracy target (largest drop vs FP32) and what reaching it may cost."""

    max_drop: float
    max_latency_pct: float | None = None
    max_layers: int | None = None  # most candidates left float, layers and unrounded activations together
    min_z: float = 2.0  # a layer's paired gain must exceed this many standard errors (0: any gain)
    grow: bool = True  # when the greedy pass falls short, try the best remaining candidates as sets
    target_z: float = 0.0  # the drop vs FP32 plus this many standard errors must be within max_drop (0: the estimate)


@dataclass
class FallbackResult:
    """What the fallback chose, and the accuracy and latency before and after (validation split)."""

    target_accuracy: float
    accuracy_before: float
    accuracy_after: float
    latency_ms_before: float
    latency_ms_after: float
    chosen: list[str] = field(default_factory=list)  # convs/gemms left float
    unrounded: list[str] = field(default_factory=list)  # activation tensors left unrounded
    decisions: list[dict] = field(default_factory=list)  # {"layer", "action", "reason"} in the order tried
    margin_after: float = 0.0  # target_z standard errors of the paired drop vs FP32, for the file after

    @property
    def met(self) -> bool:
        return self.accuracy_after - self.margin_after >= self.target_accuracy

    @property
    def n_float(self) -> int:
        return len(self.chosen) + len(self.unrounded)

    @property
    def extra_latency_pct(self) -> float:
        return (self.latency_ms_after / self.latency_ms_before - 1) * 100

    def to_dict(self) -> dict:
        return {**asdict(self), "met": self.met, "extra_latency_pct": self.extra_latency_pct, "n_float": self.n_float}

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def significant_gain(before: np.ndarray, after: np.ndarray, min_z: float) -> tuple[int, int, bool]:
    """Images ``after`` fixes and breaks (per-image correctness, same images) and whether the net gain
    exceeds ``min_z`` standard errors (McNemar: under no effect, fixed - broken has variance fixed + broken)."""
    fixed, broken = int((after & ~before).sum()), int((before & ~after).sum())
    return fixed, broken, fixed - broken > min_z * (fixed + broken) ** 0.5


def paired_drop_margin(fp32_correct: np.ndarray, correct: np.ndarray, z: float) -> float:
    """``z`` standard errors of the accuracy drop vs FP32 measured on the same images (per-image
    correctness of each): the mean of ``fp32 - int8`` per image has standard error ``std / sqrt(n)``,
    so pairs both get right or both get wrong add nothing; only the images they disagree on count."""
    if z == 0:
        return 0.0
    d = np.asarray(fp32_correct, np.float64) - np.asarray(correct, np.float64)
    return float(z * d.std(ddof=1) / np.sqrt(len(d)))


def choose_fallback(
    int8_path: str | Path,
    float_weights: Mapping[str, np.ndarray],
    report: SensitivityReport,
    images: np.ndarray,
    labels: np.ndarray,
    fp32_accuracy: float | np.ndarray,
    budget: FallbackBudget,
    out: str | Path,
    latency: dict | None = None,
) -> FallbackResult:
    """Write ``out``: ``int8_path`` with the chosen layers float (a copy of it when none is needed).

    Args:
        report: :func:`~edgeqat.quant.sensitivity.layer_sensitivity` on the same ``images``.
        fp32_accuracy: the FP32 model's accuracy on ``images``, or its per-image correctness there (a bool
            array, which ``budget.target_z`` needs); the target is the accuracy minus ``budget.max_drop``.
        latency: keyword arguments of ``measure_latency_ms`` (``threads``, ``iters``); the input is one image.
    """
    with tempfile.TemporaryDirectory() as tmp:
        search = _Search(Path(int8_path), float_weights, report, images, np.asarray(labels).ravel(), fp32_accuracy,
                         budget, dict(latency or {}), Path(tmp))
        search.greedy()
        if budget.grow and not search.result.met:
            search.grow()
    onnx.save(search.best, str(out))
    return search.result


@dataclass
class _Trial:
    rows: list[LayerSensitivity]
    ms: float
    extra_pct: float
    correct: np.ndarray | None = None  # None: not evaluated (``refused``)
    model: onnx.ModelProto | None = None
    refused: str = ""  # why it is out of bounds: over the latency budget, or no integer kernel left


class _Search:
    """The state both passes share: the set chosen so far, its file and per-image correctness."""

    def __init__(self, int8_path: Path, float_weights, report, images, labels, fp32_accuracy: float | np.ndarray,
                 budget: FallbackBudget, timing: dict, tmp: Path) -> None:
        from edgeqat.quant.verify import measure_latency_ms

        self.fp32_correct = None if np.ndim(fp32_accuracy) == 0 else np.asarray(fp32_accuracy, bool).ravel()
        if budget.target_z and self.fp32_correct is None:
            raise ValueError("FallbackBudget.target_z needs the FP32 model's per-image correctness, not its accuracy")
        if self.fp32_correct is not None:
            fp32_accuracy = float(self.fp32_correct.mean())
        self.model = self.best = onnx.load(str(int8_path))
        self.float_weights, self.report, self.images, self.labels = float_weights, report, images, labels
        self.budget, self.timing, self.tmp = budget, timing, tmp
        self.shape = (1, *images.shape[1:])
        self.chosen_rows: list[LayerSensitivity] = []
        self.best_correct = self.correct(int8_path)
        accuracy, base_ms = float(self.best_correct.mean()), measure_latency_ms(int8_path, self.shape, **timing)
        self.result = FallbackResult(fp32_accuracy - budget.max_drop, accuracy, accuracy, base_ms, base_ms,
                                     margin_after=self.margin(self.best_correct))

    def correct(self, path: Path | str) -> np.ndarray:
        from edgeqat.quant.verify import run_onnx

        return run_onnx(path, self.images).argmax(1) == self.labels

    def margin(self, correct: np.ndarray) -> float:
        """What the file's validation accuracy must exceed the target by (``target_z``; 0 without)."""
        if not self.budget.target_z:
            return 0.0
        return paired_drop_margin(self.fp32_correct, correct, self.budget.target_z)

    def meets(self, correct: np.ndarray) -> bool:
        return float(correct.mean()) - self.margin(correct) >= self.result.target_accuracy

    def trial(self, rows: list[LayerSensitivity]) -> _Trial:
        """The file with ``rows`` float on top of the chosen set: timed, and evaluated when within budget.

        A file ORT runs with no integer kernel left is refused like one over budget: it is the FP32 model
        (slower, with its clamps), and verify would refuse to publish it as INT8 (MobileNetV3, aimed at
        0.25 pt: the run failed there before this check).
        """
        from edgeqat.quant.report import inspect_ort_graph
        from edgeqat.quant.verify import measure_latency_ms

        every = [*self.chosen_rows, *rows]
        model = leave_float(self.model, [r.layer for r in every if r.kind == "layer"], self.float_weights,
                            self.report.scope, activations=[r.layer for r in every if r.kind == "activation"])
        path = self.tmp / "candidate.onnx"
        onnx.save(model, str(path))
        ms = measure_latency_ms(path, self.shape, **self.timing)
        trial = _Trial(rows, ms, (ms / self.result.latency_ms_before - 1) * 100)
        if self.budget.max_latency_pct is not None and trial.extra_pct > self.budget.max_latency_pct:
            trial.refused = (f"+{trial.extra_pct:.1f} % latency > quant.fallback.max_latency_pct="
                             f"{self.budget.max_latency_pct:g}")
        elif inspect_ort_graph(path).integer_op_count == 0:
            trial.refused = "ORT would run no integer kernel: that is the FP32 model, not an INT8 one"
        else:
            trial.correct, trial.model = self.correct(path), model
        return trial

    def accept(self, trial: _Trial) -> None:
        r = self.result
        self.chosen_rows += trial.rows
        r.chosen = [row.layer for row in self.chosen_rows if row.kind == "layer"]
        r.unrounded = [row.layer for row in self.chosen_rows if row.kind == "activation"]
        r.accuracy_after, r.latency_ms_after = float(trial.correct.mean()), trial.ms
        r.margin_after = self.margin(trial.correct)
        self.best, self.best_correct = trial.model, trial.correct

    def greedy(self) -> None:
        """One candidate at a time, most recovered first, each kept only if its gain clears the gate."""
        r, budget = self.result, self.budget
        for row in self.report.layers:
            if r.met:
                break
            if row.recovered <= 0:
                r.decisions.append({"layer": row.layer, "action": "not tried",
                                    "reason": "left float alone it recovers nothing"})
                continue
            if budget.max_layers is not None and r.n_float >= budget.max_layers:
                r.decisions.append({"layer": row.layer, "action": "stopped",
                                    "reason": f"quant.fallback.max_layers={budget.max_layers} reached"})
                break
            trial = self.trial([row])
            if trial.correct is None:
                r.decisions.append({"layer": row.layer, "action": "skipped", "reason": trial.refused})
                continue
            acc = float(trial.correct.mean())
            fixed, broken, significant = significant_gain(self.best_correct, trial.correct, budget.min_z)
            if not significant:
                r.decisions.append({"layer": row.layer, "action": "rejected",
                                    "reason": f"with the layers already float it fixes {fixed} images and breaks "
                                              f"{broken} ({r.accuracy_after:.4f} -> {acc:.4f}): within "
                                              f"{budget.min_z:g} standard errors of no gain"})
                continue
            r.decisions.append({"layer": row.layer, "action": "float",
                                "reason": f"recovers {row.recovered * 100:+.2f} pt alone; with the set: accuracy "
                                          f"{r.accuracy_after:.4f} -> {acc:.4f} ({fixed} images fixed, "
                                          f"{broken} broken), latency {trial.extra_pct:+.1f} %"})
            self.accept(trial)

    def grow(self) -> None:
        """The best remaining candidates as sets: top 2, 4, 8, ... until one is good, then bisect.

        Good: it meets the target *and* its gain clears the gate. A set that meets the target by a few
        images' luck is not kept; the doubling goes on to a larger one (MobileNetV3, seed 0: the top 11
        met the target by 1 image, fixing 187 and breaking 158).
        """
        r, budget = self.result, self.budget
        # every candidate, not only those that recover something alone: where the loss is spread, a row's own
        # gain is noise (MobileNetV3: one activation unrounded flips ~400 of 6,000 images, nets +3), so the
        # order is a guess and the set's test decides
        rest = [row for row in self.report.layers if row not in self.chosen_rows]
        room = len(rest) if budget.max_layers is None else min(len(rest), budget.max_layers - r.n_float)
        tried: dict[int, _Trial] = {}

        def good(trial: _Trial) -> bool:
            return (trial.correct is not None and self.meets(trial.correct)
                    and significant_gain(self.best_correct, trial.correct, budget.min_z)[2])

        def attempt(k: int) -> _Trial:
            tried[k] = tried.get(k) or self.trial(rest[:k])
            return tried[k]

        low, high, k = 1, None, 2  # low: a size known not to be good; high: the smallest known good or out of bounds
        while room >= 2 and high is None:
            k = min(k, room)
            trial = attempt(k)
            if trial.correct is None or good(trial):
                high = k
            elif k == room:
                break
            else:
                low, k = k, 2 * k
        while high is not None and high - low > 1:  # bisect: the smallest good k within budget
            mid = (low + high) // 2
            trial = attempt(mid)
            # out of bounds is too many, like good: a larger set only costs more and floats more kernels
            # (MobileNetV3 seed 1: top 181 out of bounds sent the search up to 154, 167, ... past 129-153)
            low, high = (low, mid) if trial.correct is None or good(trial) else (mid, high)
        self._record_growth(tried, high if high is not None and good(tried[high]) else None, room)

    def _record_growth(self, tried: dict[int, _Trial], k: int | None, room: int) -> None:
        r, budget = self.result, self.budget
        for size, trial in sorted(tried.items()):
            names = ", ".join(row.layer for row in trial.rows[:3]) + (", ..." if size > 3 else "")
            what = f"top {size} remaining ({names})"
            if trial.correct is None:
                r.decisions.append({"layer": what, "action": "set out of bounds", "reason": trial.refused})
                continue
            acc = float(trial.correct.mean())
            fixed, broken, significant = significant_gain(self.best_correct, trial.correct, budget.min_z)
            margin = self.margin(trial.correct)
            by = f" by {budget.target_z:g} standard errors ({acc - margin:.4f})" if margin else ""
            verdict = (f"meets the target {r.target_accuracy:.4f}{by}" if self.meets(trial.correct)
                       else f"misses the target {r.target_accuracy:.4f}{by}")
            noise = "" if significant else f", within {budget.min_z:g} standard errors of no gain"
            r.decisions.append({"layer": what, "action": "set tried",
                                "reason": f"accuracy {r.accuracy_after:.4f} -> {acc:.4f} ({fixed} images fixed, "
                                          f"{broken} broken{noise}), latency {trial.extra_pct:+.1f} %: {verdict}"})
        if k is None:
            r.decisions.append({"layer": "sets", "action": "none kept",
                                "reason": f"no top-k of the {room} remaining candidates meets the target, beyond "
                                          "noise, within the budget"})
            return
        r.decisions.append({"layer": f"top {k}", "action": "float",
                            "reason": f"the smallest top-k meeting the target beyond noise: {k} candidates, latency "
                                      f"{tried[k].extra_pct:+.1f} %"})
        self.accept(tried[k])
