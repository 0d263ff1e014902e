"""GraphReport on hand-built QDQ graphs: what stays float in ORT, and the stated reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeqat.quant import QuantizationError, assert_integer_kernels, inspect_ort_graph


def _qdq_model(path: Path) -> Path:
    """x -> Q -> DQ -> Conv(int8 w) -> Q -> DQ -> HardSwish -> Q -> DQ -> Clip(0, 1) -> y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, (4, 2, 1, 1)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z"),
        numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"]),
        helper.make_node("HardSwish", ["cd"], ["h"], name="hardswish"),
        helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"]),
        helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["hd"]),
        helper.make_node("Clip", ["hd", "lo", "hi"], ["y"], name="clip"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], initializer=inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def test_float_nodes_come_with_reasons(tmp_path: Path) -> None:
    report = inspect_ort_graph(_qdq_model(tmp_path / "m.onnx"))
    assert report.count("QLinearConv") == 1 and report.integer_op_count >= 1
    reasons = {n.op_type: n.reason for n in report.float_nodes}
    # ORT expands HardSwish into HardSigmoid * x; neither has an int8 kernel
    assert "no int8 HardSigmoid" in reasons["HardSigmoid"] and "not quantized" in reasons["Mul"]
    assert reasons["Clip"].startswith("Clip not fused")
    assert "QLinearConv" not in reasons and "QuantizeLinear" not in reasons
    as_dict = report.to_dict()
    assert as_dict["float_ops"] == {"HardSigmoid": 1, "Mul": 1, "Clip": 1}
    assert all(n["name"] for n in as_dict["float_nodes"])
    saved = report.save_json(tmp_path / "int8" / "report.json")
    assert saved.exists() and '"HardSigmoid"' in saved.read_text()


def test_float_only_graph_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    path = tmp_path / "f.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    report = inspect_ort_graph(path)
    assert report.integer_op_count == 0 and report.float_nodes[0].op_type == "Relu"
    with pytest.raises(QuantizationError, match="must not be published as INT8"):
        assert_integer_kernels(report)


def test_unloadable_model_is_a_quantization_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx file")
    with pytest.raises(QuantizationError, match="cannot load"):
        inspect_ort_graph(path)
