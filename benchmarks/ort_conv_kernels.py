"""Which ORT int8 conv kernel is faster, by conv shape: where ``quant/gemm_routing.py`` draws its line.

    PYTHONPATH=src python benchmarks/ort_conv_kernels.py

Each shape becomes a one-conv QDQ model with random int8 weights. It is timed twice in one process:
once with weight zero point 0 (ORT's symmetric conv kernel) and once with the weights moved by -1
and zero point -1 (im2col + the u8s8 GEMM, on AMX where the CPU has it). Outputs are checked to be
identical. Batch 1, 1 thread, best of 3 medians. Writes ``benchmarks/results/ort_conv_kernels.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from _machine import machine_facts
from edgeqat.quant.gemm_routing import DEFAULT_MIN_DEPTH, MIN_OUT_CHANNELS

# (in_channels, out_channels, kernel, spatial, groups): the convs of the benchmarked families at 224².
SHAPES = [
    (3, 32, 3, 112, 1), (3, 64, 7, 112, 1), (32, 64, 3, 112, 1), (16, 96, 1, 112, 1), (24, 144, 1, 56, 1),
    (96, 24, 1, 56, 1), (144, 24, 1, 56, 1), (64, 64, 3, 56, 1), (40, 240, 1, 28, 1), (240, 40, 1, 28, 1),
    (64, 128, 1, 28, 1), (128, 64, 1, 28, 1), (256, 64, 1, 28, 1), (64, 128, 3, 28, 1), (128, 128, 3, 28, 1),
    (80, 480, 1, 14, 1), (480, 80, 1, 14, 1), (672, 112, 1, 14, 1), (128, 256, 1, 14, 1), (256, 256, 3, 14, 1),
    (96, 576, 1, 7, 1), (576, 96, 1, 7, 1), (192, 1152, 1, 7, 1), (1152, 192, 1, 7, 1), (256, 512, 1, 7, 1),
    (320, 1280, 1, 7, 1), (512, 512, 3, 7, 1), (144, 144, 3, 56, 144), (672, 672, 5, 14, 672),
]


def conv_model(cin: int, cout: int, k: int, groups: int, zero_point: int) -> bytes:
    w = np.random.default_rng(0).integers(-127, 128, (cout, cin // groups, k, k)).astype(np.int16) + zero_point
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zero_point"),
        numpy_helper.from_array(w.astype(np.int8), "w"),
        numpy_helper.from_array(np.full(cout, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.full(cout, zero_point, np.int8), "w_zero_point"),
        numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zero_point"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero_point"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero_point"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[k // 2] * 4, group=groups),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zero_point"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "y_scale", "y_zero_point"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()


def timed(model: bytes, x: np.ndarray, iters: int) -> tuple[float, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ort_conv_kernels.json")
    args = parser.parse_args()
    rows = []
    print(f"{'cin':>5} {'cout':>5} {'k':>2} {'hw':>4} {'groups':>6} {'depth':>6} {'sym us':>8} {'gemm us':>8} ratio")
    for cin, cout, k, hw, groups in SHAPES:
        x = np.random.default_rng(1).standard_normal((1, cin, hw, hw), dtype=np.float32)
        symmetric, gemm = conv_model(cin, cout, k, groups, 0), conv_model(cin, cout, k, groups, -1)
        sym_us = min(timed(symmetric, x, args.iters)[0] for _ in range(3))
        gemm_us = min(timed(gemm, x, args.iters)[0] for _ in range(3))
        if not np.array_equal(timed(symmetric, x, 1)[1], timed(gemm, x, 1)[1]):
            raise SystemExit(f"outputs differ for {cin}->{cout} k{k}: the zero-point shift is not exact")
        depth = cin // groups * k * k
        rows.append({"in_channels": cin, "out_channels": cout, "kernel": k, "spatial": hw, "groups": groups,
                     "depth": depth, "symmetric_us": round(sym_us, 1), "gemm_us": round(gemm_us, 1),
                     "gemm_over_symmetric": round(gemm_us / sym_us, 3),
                     "routed": groups == 1 and depth >= DEFAULT_MIN_DEPTH and cout >= MIN_OUT_CHANNELS})
        print(f"{cin:5d} {cout:5d} {k:2d} {hw:4d} {groups:6d} {depth:6d} {sym_us:8.0f} {gemm_us:8.0f} "
              f"{gemm_us / sym_us:5.2f}", flush=True)
    meta = {**machine_facts(), "ort_threads": 1, "batch": 1, "iters": args.iters,
            "method": "best of 3 medians per kernel", "min_depth": DEFAULT_MIN_DEPTH,
            "min_out_channels": MIN_OUT_CHANNELS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
