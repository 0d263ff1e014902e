"""Where FP32 and INT8 spend their time in ONNX Runtime, by kind of conv: what limits a speed-up.

    PYTHONPATH=src python benchmarks/ort_profile.py [--models efficientnet_lite0 ...]

Builds the same FP32 and INT8 (QAT path) files as ``quant_speed.py``, runs each with ORT's profiler
(224², batch 1, 1 thread) and sums the kernel time per node kind: the stem (first conv), depthwise
convs, pointwise 1x1 convs, other dense convs, and everything else by op type. Writes
``benchmarks/results/ort_profile.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from _machine import machine_facts
from edgeqat.quant import convert, export_onnx, freeze_bn_stats, freeze_observers, prepare_qat, resolve_ort_gemm_convs
from quant_speed import build, sgd_steps

CONV_OPS = {"Conv", "FusedConv", "QLinearConv"}


def node_kinds(optimized: onnx.ModelProto) -> dict[str, str]:
    """Node name -> kind, read from the graph ORT executes (attributes survive its layout rewrites)."""
    kinds, seen_conv = {}, False
    for node in optimized.graph.node:
        if node.op_type not in CONV_OPS:
            kinds[node.name] = node.op_type
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if not seen_conv:
            kinds[node.name], seen_conv = "conv: stem", True
        elif attrs.get("group", 1) > 1:
            kinds[node.name] = "conv: depthwise"
        elif list(attrs.get("kernel_shape", [])) == [1, 1]:
            kinds[node.name] = "conv: pointwise 1x1"
        else:
            kinds[node.name] = "conv: dense kxk"
    return kinds


def profile(path: Path, work: Path, runs: int) -> dict[str, float]:
    """Mean per-run kernel time (ms) per node kind, the first (warm-up) run left out."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(work / path.stem)
    options.optimized_model_filepath = str(work / f"{path.stem}.optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    kinds = node_kinds(onnx.load(options.optimized_model_filepath))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    for _ in range(runs + 1):
        session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    seen: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = event["name"].removesuffix("_kernel_time")
        seen[node] += 1
        if seen[node] > 1:
            total[kinds.get(node, event["args"].get("op_name", "?"))] += event["dur"] / 1e3
    return {kind: round(ms / runs, 3) for kind, ms in total.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "efficientnet_lite0", "mobilenetv3_small_100"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ort_profile.json")
    args = parser.parse_args()
    gemm = resolve_ort_gemm_convs(None)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            torch.manual_seed(0)
            model = build(name, 10)
            sgd_steps(model, steps=10, res=64, lr=0.01, seed=0)
            example = torch.randn(1, 3, 224, 224)
            fp32 = export_onnx(model, example, work / f"{name}_fp32.onnx")
            prepared = prepare_qat(model, torch.randn(2, 3, 64, 64))
            sgd_steps(prepared, steps=3, res=64, lr=0.001, seed=1)
            freeze_observers(prepared)
            freeze_bn_stats(prepared)
            int8 = export_onnx(convert(prepared), example, work / f"{name}_int8.onnx", ort_gemm_convs=gemm)
            fp32_ms, int8_ms = profile(fp32, work, args.runs), profile(int8, work, args.runs)
            rows = {kind: {"fp32_ms": fp32_ms.get(kind), "int8_ms": int8_ms.get(kind)}
                    for kind in dict.fromkeys([*fp32_ms, *int8_ms])}
            results[name] = {"fp32_total_ms": round(sum(fp32_ms.values()), 3),
                             "int8_total_ms": round(sum(int8_ms.values()), 3), "by_kind": rows}
            print(f"{name}: FP32 {results[name]['fp32_total_ms']:.2f} ms, INT8 {results[name]['int8_total_ms']:.2f} ms")
            for kind, row in rows.items():
                f, i = row["fp32_ms"], row["int8_ms"]
                ratio = f"x{f / i:.2f}" if f and i else ""
                print(f"  {kind:24s} {f if f is not None else '-':>8} {i if i is not None else '-':>8} {ratio}")
    meta = {**machine_facts(), "ort_gemm_convs": gemm, "ort_threads": 1,
            "batch": 1, "resolution": 224, "runs": args.runs, "method": "ORT profiler kernel times, mean per run"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "models": results}, indent=2))


if __name__ == "__main__":
    main()
