"""ONNX post-export passes on hand-built graphs: semantics kept, form changed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeqat.quant.onnx_passes import apply_onnx_passes


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _model(nodes: list, inits: list, out_shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits,
    )
    graph.value_info.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_weight_quantize_is_folded_to_int8_initializer() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "zp")]
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"], axis=0),
        helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wdq"], axis=0),
        helper.make_node("Conv", ["x", "wdq"], ["y"]),
    ]
    nodes[2].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="x" * 100)
    model = _model(nodes, inits, ["N", 4, 3, 3])
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    expected = _run(model, x)
    counts = apply_onnx_passes(model)
    assert counts["fold_constant_quantize"] == 1 and counts["strip_debug_metadata"] >= 1
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "Conv"]
    by_name = {i.name: i for i in model.graph.initializer}
    assert by_name["wq"].data_type == TensorProto.INT8 and "w" not in by_name  # float weight pruned
    np.testing.assert_array_equal(_run(model, x), expected)


def test_spatial_reduce_mean_becomes_global_average_pool() -> None:
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    model = _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)], [axes], ["N", 2, 1, 1])
    x = np.random.default_rng(1).standard_normal((2, 2, 3, 3)).astype(np.float32)
    expected = _run(model, x)
    apply_onnx_passes(model)
    assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool"]
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-6)


def test_other_reduce_mean_is_left_alone() -> None:
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    model = _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)], [axes], ["N", 1, 3, 3])
    apply_onnx_passes(model)
    assert [n.op_type for n in model.graph.node] == ["ReduceMean"]
