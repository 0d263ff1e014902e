"""Export the FP32 sibling and verify the INT8 model on the file ONNX Runtime actually runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from edgeqat.pipeline.damage import log_damage
from edgeqat.pipeline.recipes import Int8Model, JobContext, post_training_quantize
from edgeqat.quant.isa import CpuInfo, detect_cpu
from edgeqat.quant.weight_format import WeightFormat
from edgeqat.tracking.summary import phase_tags

if TYPE_CHECKING:
    import numpy as np

    from edgeqat.quant.verify import VerifyResult
    from edgeqat.tracking.recorder import RunRecorder


def target_tags(cpu: CpuInfo, weights: WeightFormat) -> dict[str, str]:
    """Where the run's figures come from (``edgeqat.cpu``, ``edgeqat.isa``) and what the INT8 file is for."""
    return {**cpu.tags(), "edgeqat.target_isa": weights.target_isa.value,
            "edgeqat.weight_range": weights.range.value}


def export_fp32(ctx: JobContext) -> Path:
    from edgeqat.quant import export_onnx

    path = export_onnx(ctx.module.backbone.eval(), ctx.example_input(), ctx.models_dir / "fp32" / "model.onnx")
    ctx.run.recorder.log_artifact(path, "fp32", copy=False)
    return path


def _latency(ctx: JobContext, path: Path, prefix: str) -> dict[str, float]:
    """Batch 1, ``quant.latency_threads`` threads, at the trained resolution and each benchmark one."""
    from edgeqat.quant import measure_latency_ms

    q, dm = ctx.cfg.quant, ctx.datamodule
    out = {f"{prefix}/latency_ms": measure_latency_ms(path, (1, dm.in_chans, dm.image_size, dm.image_size),
                                                      threads=q.latency_threads, iters=q.latency_iters)}
    for res in q.benchmark_resolutions:
        out[f"{prefix}/latency_ms_{res}"] = measure_latency_ms(path, (1, dm.in_chans, res, res),
                                                               threads=q.latency_threads, iters=q.latency_iters)
    return out


def _speedups(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """``<prefix>/speedup[_<res>]`` = FP32 latency / ``prefix`` latency at the same resolution."""
    out = {}
    for key, fp32_ms in metrics.items():
        if key.startswith("fp32/latency_ms"):
            suffix = key.removeprefix("fp32/latency_ms")  # "" (trained resolution) or "_224"
            out[f"{prefix}/speedup{suffix}"] = fp32_ms / metrics[f"{prefix}/latency_ms{suffix}"]
    return out


def explain_drift(recorder: RunRecorder, onnx_path: Path, images: np.ndarray, result: VerifyResult) -> dict[str, float]:
    """Where drift beyond one output step comes from, logged only when there is some.

    ``int8/drift_sources.json`` (``quant.localize_drift``) and ``int8/max_source_steps``: 1 means
    rounding ties carried by the network, more means a kernel that computes other integers.
    """
    from edgeqat.quant import localize_drift

    if result.max_step_drift is None or result.max_step_drift <= 1 + 1e-3:
        return {}
    report = localize_drift(onnx_path, images)
    recorder.log_dict(report.to_dict(), "int8/drift_sources.json")
    return {"int8/max_source_steps": float(report.max_source_steps)}


def verify(ctx: JobContext, fp32_onnx: Path, int8: Int8Model | None) -> dict[str, float]:
    """Accuracy, agreement, kernels, latency and size of the exported files; logs metrics and artifacts."""
    import onnx

    from edgeqat.quant import assert_integer_kernels, evaluate_onnx, file_size_mb, inspect_ort_graph
    from edgeqat.quant.weight_format import dense_weight_extremes

    rec, q = ctx.run.recorder, ctx.cfg.quant
    rec.set_tags(phase_tags("verify"))
    images, labels = ctx.datamodule.split_arrays("test")
    fp32_result = evaluate_onnx(fp32_onnx, images, labels)
    m: dict[str, float] = {"fp32/size_mb": file_size_mb(fp32_onnx), "test/acc_fp32_onnx": fp32_result.accuracy,
                           **_latency(ctx, fp32_onnx, "fp32")}
    if int8 is not None:
        report = inspect_ort_graph(int8.path)
        report_path = report.save_json(int8.path.parent / "report.json")
        rec.log_artifact(report_path, "int8", copy=False)
        assert_integer_kernels(report)  # never call a float model INT8
        result = evaluate_onnx(int8.path, images, labels, reference_logits=int8.reference_logits,
                               fake_quant_logits=int8.fake_quant_logits)
        m.update({
            "test/acc_int8": result.accuracy,
            # against the FP32 model QAT started from (not one trained for as many epochs as FP32 + QAT)
            "int8/acc_drop": ctx.metrics.get("test/acc_fp32", fp32_result.accuracy) - result.accuracy,
            "int8/size_mb": file_size_mb(int8.path),
            "int8/qlinearconv": float(report.count("QLinearConv")),
            "int8/qlinearconv_gemm": float(report.conv_kernels.get("gemm", 0)),
            "int8/float_conv": float(report.count("Conv") + report.count("FusedConv")),
            "int8/float_nodes": float(len(report.float_nodes)),
            **_latency(ctx, int8.path, "int8"),
        })
        m["int8/size_ratio"] = m["int8/size_mb"] / m["fp32/size_mb"]
        if result.top1_agreement is not None:
            m["int8/top1_agreement"] = result.top1_agreement
        if result.max_step_drift is not None:
            m["int8/max_step_drift"] = result.max_step_drift
            m["int8/mean_step_drift"] = result.mean_step_drift
            m["int8/within_step_fraction"] = result.within_step_fraction
            m.update(explain_drift(rec, int8.path, images, result))
        if result.fake_quant is not None:
            m["int8/fake_quant_agreement"] = result.fake_quant.top1_agreement
            if result.fake_quant.max_step_drift is not None:
                m["int8/fake_quant_max_step_drift"] = result.fake_quant.max_step_drift
                m["int8/fake_quant_within_step_fraction"] = result.fake_quant.within_step_fraction
        m["int8/dense_weight_max"] = float(max(dense_weight_extremes(onnx.load(str(int8.path))).values(), default=0))
        m.update(_speedups(m, "int8"))
        rec.log_artifact(int8.path, "int8", copy=False)
        cpu = detect_cpu()  # the CPU every figure above was measured on
        rec.log_dict({**result.to_dict(), "cpu": cpu.model, "isa": cpu.isa.value, **ctx.weights.to_dict(),
                      "dense_weight_max": m["int8/dense_weight_max"]}, "int8/verification.json")
        log_damage(rec, ctx.datamodule.class_names, fp32_result, result)
    if q.ptq_baseline and q.mode != "ptq_int8":
        ptq_path = post_training_quantize(ctx, fp32_onnx, ctx.models_dir / "ptq" / "model.onnx")
        m.update({"test/acc_ptq": evaluate_onnx(ptq_path, images, labels).accuracy,
                  "ptq/size_mb": file_size_mb(ptq_path), **_latency(ctx, ptq_path, "ptq")})
        m.update(_speedups(m, "ptq"))
        rec.log_artifact(ptq_path, "ptq", copy=False)
    rec.log_metrics(m)
    (ctx.models_dir / "metrics.json").write_text(json.dumps(m, indent=1))
    return m
