"""``quant.sensitivity`` and ``quant.fallback`` in a run: which layers INT8 hurts, and keeping them float.

Both run on the validation split: the layers are chosen there, the test split then judges the
result like any other INT8 file (``verify``). Logged:

* ``int8/sensitivity.json`` (every row), ``int8/sensitivity_table.json`` (the UI's table) and
  ``int8/sensitivity.png``: accuracy recovered vs share of the INT8 latency, per layer (the same as
  ``edgeqat sensitivity RUN_ID`` logs into a finished run: ``run_sensitivity.py``);
* with a fallback, ``int8/fallback.json`` (chosen set, every decision and its reason), the
  ``fallback/*`` metrics (validation accuracy and batch-1 latency before and after) and, when it
  left a layer float, the INT8 file before it as ``int8_before_fallback/model.onnx``. The file the
  fallback writes is the run's INT8 model from then on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from edgeqat.pipeline.recipes import Int8Model, JobContext
from edgeqat.tracking.summary import phase_tags

__all__ = ["analyse_layers", "log_report", "qat_float_weights", "wants_float_weights"]


def wants_float_weights(quant: DictConfig) -> bool:
    """Whether the run needs each layer's unrounded weights (a sensitivity report or a fallback)."""
    return bool(quant.sensitivity) or quant.fallback.max_drop is not None


def qat_float_weights(prepared, example, weights) -> dict[str, np.ndarray]:
    """The QAT model's trained weights per layer of its INT8 file: one more export, weights unfolded."""
    from edgeqat.quant import convert, export_onnx

    found: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(convert(prepared, fold_weights=False), example, Path(tmp) / "unfolded.onnx", weights=weights,
                    float_weights=found)
    return found


def analyse_layers(ctx: JobContext, fp32_onnx: Path, int8: Int8Model) -> Int8Model:
    """Sensitivity report, then the fallback if one is configured; returns the run's INT8 model."""
    import onnx

    from edgeqat.quant.sensitivity import float_weights_of, layer_sensitivity
    from edgeqat.quant.verify import run_onnx

    q, rec = ctx.cfg.quant, ctx.run.recorder
    if not wants_float_weights(q):
        return int8
    rec.set_tags(phase_tags("sensitivity"))
    float_weights = int8.float_weights if int8.float_weights is not None else float_weights_of(onnx.load(str(fp32_onnx)))
    images, labels = ctx.datamodule.split_arrays("val", limit=q.sensitivity_images)
    fp32_correct = run_onnx(fp32_onnx, images).argmax(1) == labels
    fp32_accuracy = float(fp32_correct.mean())

    def progress(done: int, total: int) -> None:
        rec.set_tags({"edgeqat.sensitivity_progress": f"{done}/{total} rows"})

    report = layer_sensitivity(int8.path, float_weights, images, labels, fp32_accuracy=fp32_accuracy, progress=progress,
                               scope=q.float_scope, activations=None if q.sensitivity_activations else ())
    ctx.metrics.update(log_report(rec, report))
    if q.fallback.max_drop is None:
        return int8
    return _fallback(ctx, int8, float_weights, report, images, labels, fp32_correct)


def log_report(rec, report) -> dict[str, float]:
    """The report into the run: JSON, the UI's table, the figure, ``sensitivity/*`` metrics, the top layer."""
    rec.log_dict(report.to_dict(), "int8/sensitivity.json")
    rec.log_table(_table(report), "int8/sensitivity_table.json")
    rec.log_figure(_figure(report), "int8/sensitivity.png")
    metrics = {"sensitivity/val_acc_int8": report.int8_accuracy, "sensitivity/layers": float(len(report.layers))}
    if report.fp32_accuracy is not None:
        metrics["sensitivity/val_acc_fp32"] = report.fp32_accuracy
    tags = {"edgeqat.sensitivity_scope": report.scope}
    if report.layers:
        metrics["sensitivity/top_recovered"] = report.layers[0].recovered
        tags["edgeqat.sensitivity_top"] = f"{report.layers[0].layer} ({report.layers[0].recovered * 100:+.2f} pt)"
    rec.log_metrics(metrics)
    rec.set_tags(tags)
    return metrics


def _fallback(ctx: JobContext, int8: Int8Model, float_weights, report, images, labels, fp32_correct) -> Int8Model:
    from edgeqat.quant.fallback import FallbackBudget, choose_fallback

    q, rec = ctx.cfg.quant, ctx.run.recorder
    f = q.fallback
    out = ctx.models_dir / "int8_fallback" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = choose_fallback(int8.path, float_weights, report, images, labels, fp32_correct,
                             FallbackBudget(f.max_drop, f.max_latency_pct, f.max_layers, f.min_z, f.grow, f.target_z),
                             out,
                             latency={"threads": q.latency_threads, "iters": q.latency_iters})
    rec.log_dict(result.to_dict(), "int8/fallback.json")
    metrics = {"fallback/val_acc_before": result.accuracy_before, "fallback/val_acc_after": result.accuracy_after,
               "fallback/latency_ms_before": result.latency_ms_before, "fallback/latency_ms_after": result.latency_ms_after,
               "fallback/extra_latency_pct": result.extra_latency_pct, "fallback/layers": float(len(result.chosen)),
               "fallback/activations": float(len(result.unrounded)),
               "fallback/met": float(result.met)}
    if f.target_z:  # the accuracy the target was held to: after, less target_z standard errors of the drop
        metrics["fallback/val_acc_after_bound"] = result.accuracy_after - result.margin_after
    rec.log_metrics(metrics)
    ctx.metrics.update(metrics)
    verdict = "target met" if result.met else "target NOT met within the budget"
    rec.set_tags({"edgeqat.fallback": f"{len(result.chosen)} layer(s) float, {len(result.unrounded)} activation(s) "
                                      f"unrounded, {verdict} "
                                      f"(val {result.accuracy_before:.4f} -> {result.accuracy_after:.4f}, "
                                      f"latency {result.extra_latency_pct:+.1f} %)"})
    if not result.n_float:
        return int8
    rec.log_artifact(int8.path, "int8_before_fallback", copy=False)
    # The file now computes those layers (and the readers of those activations) in float: torch's
    # integer reference no longer describes it.
    return Int8Model(out)


def _table(report) -> dict[str, list]:
    return {
        "layer": [row.layer for row in report.layers],
        "kind": [row.kind for row in report.layers],
        "op": [row.op for row in report.layers],
        "val_acc_float": [round(row.accuracy, 4) for row in report.layers],
        "recovered_pt": [round(row.recovered * 100, 2) for row in report.layers],
        "latency_share_pct": [None if row.latency_share is None else round(row.latency_share * 100, 2)
                              for row in report.layers],
    }


def _figure(report):
    from edgeqat.pipeline.damage import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    shares = [100 * (row.latency_share or 0) for row in report.layers]
    recovered = [100 * row.recovered for row in report.layers]
    ax.scatter(shares, recovered, s=18)
    for row, x, y in list(zip(report.layers, shares, recovered))[:5]:  # the five that recover most
        ax.annotate(row.layer.removeprefix("node_"), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="gray", lw=0.6)
    ax.set(xlabel="share of INT8 kernel time (%, ORT profiler)", ylabel="accuracy recovered left float (pt)",
           title=f"Per-layer sensitivity (validation, INT8 {report.int8_accuracy:.4f})")
    plt.close(fig)
    return fig
