"""FP32 vs INT8 (QAT path) in ONNX Runtime: latency, file size and kernels, side by side.

    PYTHONPATH=src python benchmarks/quant_speed.py [--models resnet18 ...] [--no-ptq]

Random-init weights (speed and size do not depend on them) after a few FP32 SGD steps so BN
statistics are sane and no BN weight is exactly zero; then a few QAT steps, convert, export.
FP32 and INT8 latencies are measured in the same process, interleaved over several rounds
(median of medians), batch 1, 1 intra-op thread by default. Writes
``benchmarks/results/quant_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _machine import machine_facts
from edgeqat.quant import (
    convert,
    export_onnx,
    file_size_mb,
    freeze_bn_stats,
    freeze_observers,
    inspect_ort_graph,
    measure_latency_ms,
    prepare_qat,
    ptq_onnx,
    resolve_ort_gemm_convs,
)

MODELS = ["resnet18", "mobilenetv3_small_100", "efficientnet_lite0", "shufflenet_v2_x0_5", "efficientnet_b0",
          "mobilenetv3_large_100"]
# Issue targets: INT8 speed-up over FP32, INT8/FP32 file size.
TARGETS = {
    "resnet18": {"speedup": 3.4, "size_ratio": 0.27},
    "efficientnet_lite0": {"speedup": 2.2, "size_ratio": 0.36},
    "mobilenetv3_small_100": {"speedup": 0.85, "size_ratio": 0.36},
    "efficientnet_b0": {"speedup": 1.12, "size_ratio": 0.36},
    "shufflenet_v2_x0_5": {"speedup": 1.0, "size_ratio": 0.36},
    "mobilenetv3_large_100": {"speedup": 1.18, "size_ratio": 0.36},
}
KERNELS = ["QLinearConv", "Conv", "FusedConv", "QGemm", "Gemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
           "QLinearGlobalAveragePool", "QLinearConcat", "HardSigmoid", "HardSwish", "Mul", "Transpose"]


def build(name: str, num_classes: int) -> nn.Module:
    if name == "shufflenet_v2_x0_5":
        import torchvision

        return torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=num_classes)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def sgd_steps(model: nn.Module, steps: int, res: int, lr: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 3, res, res, generator=g)
        y = torch.randint(0, 10, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def interleaved_latency(paths: dict[str, Path], shape: tuple[int, ...], threads: int, rounds: int, iters: int) -> dict[str, float]:
    runs: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for key, path in paths.items():
            runs[key].append(measure_latency_ms(path, shape, threads=threads, warmup=10, iters=iters))
    return {k: float(np.median(v)) for k, v in runs.items()}


def bench(name: str, args: argparse.Namespace, work: Path) -> dict:
    t0 = time.time()
    torch.manual_seed(0)
    model = build(name, args.num_classes)
    sgd_steps(model, steps=args.fp32_steps, res=args.train_res, lr=0.01, seed=0)
    example = torch.randn(1, 3, args.res, args.res)
    fp32 = export_onnx(model, example, work / f"{name}_fp32.onnx")
    prepared = prepare_qat(model, torch.randn(2, 3, args.train_res, args.train_res))
    sgd_steps(prepared, steps=args.qat_steps, res=args.train_res, lr=0.001, seed=1)
    freeze_observers(prepared)
    freeze_bn_stats(prepared)
    converted = convert(prepared)
    # The pipeline's default (quant.ort_gemm_convs=null): deep convs on the AMX GEMM where the CPU has it.
    gemm = resolve_ort_gemm_convs(args.gemm_convs)
    int8 = export_onnx(converted, example, work / f"{name}_int8.onnx", ort_gemm_convs=gemm)
    paths = {"fp32": fp32, "int8": int8}
    if gemm:  # the same INT8 model on ORT's symmetric conv kernel only, for the side-by-side
        paths["int8_symmetric"] = export_onnx(converted, example, work / f"{name}_int8_symmetric.onnx")
    float_stem = prepare_qat(model, torch.randn(2, 3, args.train_res, args.train_res), float_stem=True)
    sgd_steps(float_stem, steps=args.qat_steps, res=args.train_res, lr=0.001, seed=1)
    float_stem_int8 = export_onnx(convert(float_stem), example, work / f"{name}_int8_float_stem.onnx",
                                  ort_gemm_convs=gemm)
    if inspect_ort_graph(float_stem_int8).count("Conv"):  # the option applies: time it too
        paths["int8_float_stem"] = float_stem_int8
    if args.ptq:
        g = torch.Generator().manual_seed(2)
        calib = [torch.randn(1, 3, args.res, args.res, generator=g).numpy() for _ in range(4)]
        paths["ptq"] = ptq_onnx(fp32, calib, work / f"{name}_ptq.onnx", ort_gemm_convs=gemm)
    latency = interleaved_latency(paths, (1, 3, args.res, args.res), args.threads, args.rounds, args.iters)
    result: dict = {"model": name}
    for key, path in paths.items():
        report = inspect_ort_graph(path)
        result[key] = {
            "latency_ms": round(latency[key], 3),
            "size_mb": round(file_size_mb(path), 3),
            "kernels": {k: report.count(k) for k in KERNELS if report.count(k)},
            "qlinearconv_kernels": report.conv_kernels,
        }
        if key != "fp32":
            result[key]["speedup"] = round(latency["fp32"] / latency[key], 3)
            result[key]["size_ratio"] = round(result[key]["size_mb"] / result["fp32"]["size_mb"], 3)
            result[key]["float_ops"] = report.to_dict()["float_ops"]
    result["target"] = TARGETS.get(name)
    result["seconds"] = round(time.time() - t0, 1)
    return result




def add_timing_args(parser: argparse.ArgumentParser, iters: int) -> None:
    """The model-building and latency options this script shares with ``weight_range.py``."""
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--train-res", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fp32-steps", type=int, default=10)
    parser.add_argument("--qat-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=iters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    add_timing_args(parser, iters=50)
    parser.add_argument("--no-ptq", dest="ptq", action="store_false")
    parser.add_argument("--gemm-convs", type=lambda v: {"true": True, "false": False}[v.lower()], default=None,
                        help="quant.ort_gemm_convs: true/false (default: where the CPU has AMX)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quant_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = json.loads(args.out.read_text())["models"] if args.out.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = bench(name, args, Path(tmp))
            results[name] = r
            line = f"{name:24s} fp32 {r['fp32']['latency_ms']:7.2f} ms {r['fp32']['size_mb']:6.2f} MB | int8 {r['int8']['latency_ms']:7.2f} ms x{r['int8']['speedup']:.2f} size {r['int8']['size_ratio']:.3f}"
            for variant in ("int8_symmetric", "int8_float_stem", "ptq"):
                if variant in r:
                    line += f" | {variant} x{r[variant]['speedup']:.2f}"
            print(line, flush=True)
    meta = {
        **machine_facts(), "ort_threads": args.threads, "batch": 1, "resolution": args.res,
        "num_classes": args.num_classes, "method": "median of per-round medians, FP32/INT8 interleaved",
        "rounds": args.rounds, "iters": args.iters,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "models": results}, indent=2))


if __name__ == "__main__":
    main()
