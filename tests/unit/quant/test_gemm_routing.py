"""Deep convs routed to ORT's GEMM kernel: chosen by shape, and not one output changes on this CPU.

"Not one output changes" holds for weights the target's kernels compute exactly: any int8 on
VNNI/AMX/ARM, |w| <= 64 on AVX2 / AVX-512BW without VNNI, where the symmetric kernel and the GEMM
saturate different sums (``test_isa``). So the routing takes the target's bound, and the tests use
weights inside this CPU's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeqat.quant import detect_cpu, export_onnx, inspect_ort_graph, ptq_onnx, route_deep_convs_to_gemm, run_onnx
from edgeqat.quant.gemm_routing import DEFAULT_MIN_DEPTH

BOUND = detect_cpu().isa.exact_weight_bound
# With int7 weights (auto on a saturating CPU) every deep conv of test_resnet has a weight at -64, which
# the shift would take to -65, past the exact range: there the routing leaves them on the symmetric kernel.
ROUTED_IN_TEST_RESNET = 2 if BOUND > 64 else 0

# (name, in_channels, out_channels, kernel, groups, routed?) chained in this order, 8x8 input.
CONVS = [
    ("deep", 32, 96, 3, 1, True),  # depth 288 >= 256, 96 outputs
    ("depthwise", 96, 96, 3, 96, False),
    ("shallow", 96, 128, 1, 1, False),  # depth 96
    ("narrow", 128, 64, 3, 1, False),  # depth 1152 but only 64 outputs
    ("deep_4x4", 64, 80, 4, 1, True),  # depth 1024
]


def _qdq_chain(wmax: int = 127) -> onnx.ModelProto:
    """QuantizeLinear -> [DequantizeLinear -> Conv -> QuantizeLinear]* with one shared weight zero point."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "act_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "act_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "act_scale", "act_zp"], ["q0"])]
    shared_zp = {}
    for i, (name, cin, cout, k, groups, _) in enumerate(CONVS):
        w = rng.integers(-wmax, wmax + 1, (cout, cin // groups, k, k)).astype(np.int8)
        zp_name = shared_zp.setdefault(cout, f"w_zp_{cout}")
        inits += [numpy_helper.from_array(w, f"{name}_w"),
                  numpy_helper.from_array(np.full(cout, 2e-3, np.float32), f"{name}_w_scale")]
        if zp_name not in {init.name for init in inits}:
            inits.append(numpy_helper.from_array(np.zeros(cout, np.int8), zp_name))
        nodes += [
            helper.make_node("DequantizeLinear", [f"q{i}", "act_scale", "act_zp"], [f"x{i}"]),
            helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_w_scale", zp_name], [f"{name}_wd"], axis=0),
            helper.make_node("Conv", [f"x{i}", f"{name}_wd"], [f"c{i}"], pads=[k // 2, k // 2, (k - 1) // 2,
                                                                                 (k - 1) // 2], group=groups),
            helper.make_node("QuantizeLinear", [f"c{i}", "act_scale", "act_zp"], [f"q{i + 1}"]),
        ]
    nodes.append(helper.make_node("DequantizeLinear", [f"q{len(CONVS)}", "act_scale", "act_zp"], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _weight_zero_points(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.output[0].removesuffix("_wd"): inits[n.input[2]] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.output[0].endswith("_wd")}


def test_only_deep_dense_convs_are_routed_and_outputs_are_bit_identical(tmp_path: Path) -> None:
    model = _qdq_chain(wmax=min(127, BOUND - 1))  # exact on this CPU before and after the -1 shift
    before, after = tmp_path / "symmetric.onnx", tmp_path / "gemm.onnx"
    onnx.save(model, before)
    assert route_deep_convs_to_gemm(model, exact_bound=BOUND) == sum(routed for *_, routed in CONVS)
    onnx.save(model, after)

    zero_points = _weight_zero_points(model)
    for name, *_, routed in CONVS:
        assert (zero_points[name] == (-1 if routed else 0)).all(), name  # the shared zero point was not edited
    shifted = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith(("_w_gemm_0", "_w_gemm_1"))]
    assert len(shifted) == 2 and all(w.dtype == np.int8 and w.max() <= 126 and w.min() >= -BOUND for w in shifted)

    x = np.random.default_rng(1).standard_normal((3, 32, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(run_onnx(after, x), run_onnx(before, x))
    assert inspect_ort_graph(before).conv_kernels == {"symmetric_conv": len(CONVS)}
    assert inspect_ort_graph(after).conv_kernels == {"symmetric_conv": 3, "gemm": 2}


def test_depth_threshold_is_a_parameter() -> None:
    model = _qdq_chain()
    assert route_deep_convs_to_gemm(model, min_depth=2000) == 0  # deepest routable conv: 1024
    assert route_deep_convs_to_gemm(model, min_depth=DEFAULT_MIN_DEPTH) == 2
    assert route_deep_convs_to_gemm(model) == 0  # already routed: zero point no longer 0
    with pytest.raises(ValueError, match="min_depth"):
        route_deep_convs_to_gemm(model, min_depth=0)


def test_routing_stays_inside_the_targets_exact_range() -> None:
    """Full-range weights are not routed for a saturating target; 7-bit ones are, unless one is at -64."""
    assert route_deep_convs_to_gemm(_qdq_chain(127), exact_bound=64) == 0
    assert route_deep_convs_to_gemm(_qdq_chain(63), exact_bound=64) == 2  # shifted into [-64, 62]
    assert route_deep_convs_to_gemm(_qdq_chain(64), exact_bound=64) == 0  # -64 - 1 would saturate


def test_exported_model_keeps_its_outputs(artifacts, tmp_path: Path) -> None:
    a = artifacts["test_resnet"]
    routed = export_onnx(a.converted, torch.from_numpy(a.images[:1]), tmp_path / "gemm.onnx", ort_gemm_convs=True,
                         weights=a.weights)
    np.testing.assert_array_equal(run_onnx(routed, a.images), run_onnx(a.int8_onnx, a.images))
    # test_resnet: layer4's two 3x3 convs (96 outputs, depth 1728 and 864) qualify, nothing else does.
    assert inspect_ort_graph(routed).conv_kernels.get("gemm", 0) == ROUTED_IN_TEST_RESNET
    assert "gemm" not in inspect_ort_graph(a.int8_onnx).conv_kernels


def test_ptq_model_is_routed_the_same_way(artifacts, tmp_path: Path) -> None:
    a = artifacts["test_resnet"]
    calibration = [a.images[i:i + 16] for i in range(0, 64, 16)]
    symmetric = ptq_onnx(a.fp32_onnx, calibration, tmp_path / "symmetric.onnx", weights=a.weights)
    routed = ptq_onnx(a.fp32_onnx, calibration, tmp_path / "gemm.onnx", ort_gemm_convs=True, weights=a.weights)
    np.testing.assert_array_equal(run_onnx(routed, a.images), run_onnx(symmetric, a.images))
    assert inspect_ort_graph(routed).conv_kernels.get("gemm", 0) == ROUTED_IN_TEST_RESNET
    assert "gemm" not in inspect_ort_graph(symmetric).conv_kernels
