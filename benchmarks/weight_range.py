"""``quant.weight_range`` on this CPU: int8 vs int7 vs u8 weights, speed and exactness side by side.

    PYTHONPATH=src python benchmarks/weight_range.py [--models resnet18 ...]

Per model, one FP32 model (random init + a few SGD steps, as ``quant_speed.py``) is quantized three
ways, each trained with the same few QAT steps: ``int8`` (s8 weights over [-127, 127]), ``int7``
(dense weights over [-64, 64]) and ``u8`` (the int8 grid stored as uint8 + 128: ORT's U8U8 kernels).
The three INT8 files and the FP32 one are timed interleaved in one process (224², batch 1, 1 thread),
and each INT8 file is compared with its converted torch model on random inputs: the largest
difference in output quantization steps and the top-1 agreement. Where the CPU's dense u8s8 kernels
saturate (AVX2 / AVX-512BW without VNNI), ``int8`` drifts and the two others do not; which of them is
faster decides ``weight_format.AUTO_ON_SATURATING``. Accuracy on real data is ``qat_accuracy.py``'s.
Writes ``benchmarks/results/weight_range.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _machine import machine_facts
from edgeqat.quant import (
    convert,
    export_onnx,
    freeze_bn_stats,
    freeze_observers,
    inspect_ort_graph,
    prepare_qat,
    resolve_weight_format,
    run_onnx,
)
from edgeqat.quant.verify import output_step
from quant_speed import add_timing_args, build, interleaved_latency, sgd_steps

MODELS = ["resnet18", "mobilenetv3_small_100", "efficientnet_lite0", "shufflenet_v2_x0_5"]
FORMATS = ["int8", "int7", "u8"]


def bench(name: str, args: argparse.Namespace, work: Path) -> dict:
    t0 = time.time()
    torch.manual_seed(0)
    model = build(name, args.num_classes)
    sgd_steps(model, steps=args.fp32_steps, res=args.train_res, lr=0.01, seed=0)
    example = torch.randn(1, 3, args.res, args.res)
    paths = {"fp32": export_onnx(model, example, work / f"{name}_fp32.onnx")}
    inputs = torch.randn(32, 3, args.train_res, args.train_res, generator=torch.Generator().manual_seed(3))
    drift = {}
    for fmt_name in FORMATS:
        fmt = resolve_weight_format(fmt_name, args.target_isa)
        prepared = prepare_qat(model, torch.randn(2, 3, args.train_res, args.train_res),
                               dense_weight_qmax=fmt.dense_qmax)
        sgd_steps(prepared, steps=args.qat_steps, res=args.train_res, lr=0.001, seed=1)
        freeze_observers(prepared)
        freeze_bn_stats(prepared)
        converted = convert(prepared)
        path = export_onnx(converted, example, work / f"{name}_{fmt_name}.onnx", weights=fmt)
        paths[fmt_name] = path
        with torch.no_grad():
            reference = converted(inputs).numpy()
        ort = run_onnx(path, inputs.numpy())
        step = output_step(path)
        drift[fmt_name] = {
            "max_step_drift": round(float(np.abs(ort - reference).max() / step), 2),
            "top1_agreement": float((ort.argmax(1) == reference.argmax(1)).mean()),
            "exact_on_target": fmt.exact_on_target,
            "qlinearconv_kernels": inspect_ort_graph(path).conv_kernels,
        }
    latency = interleaved_latency(paths, (1, 3, args.res, args.res), args.threads, args.rounds, args.iters)
    result: dict = {"model": name, "fp32_ms": round(latency["fp32"], 3)}
    for fmt_name in FORMATS:
        result[fmt_name] = {"latency_ms": round(latency[fmt_name], 3),
                            "speedup": round(latency["fp32"] / latency[fmt_name], 3), **drift[fmt_name]}
    result["seconds"] = round(time.time() - t0, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--target-isa", default=None, help="quant.target_isa (default: this CPU)")
    add_timing_args(parser, iters=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "weight_range.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = results[name] = bench(name, args, Path(tmp))
            print(f"{name:24s} fp32 {r['fp32_ms']:7.2f} ms | " + " | ".join(
                f"{f} {r[f]['latency_ms']:6.2f} ms x{r[f]['speedup']:.2f} drift {r[f]['max_step_drift']:g} "
                f"agree {r[f]['top1_agreement']:.3f}" for f in FORMATS), flush=True)
    meta = {**machine_facts(), "ort_threads": args.threads, "batch": 1,
            "resolution": args.res, "method": "median of per-round medians, all files interleaved",
            "rounds": args.rounds, "iters": args.iters}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "models": results}, indent=2))


if __name__ == "__main__":
    main()
