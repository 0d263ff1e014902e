"""A tiny real ONNX classifier and the LoggedModel spec a run would queue for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeqat.registry import LoggedModelSpec, sha256_file

PRE = {"input_name": "x", "layout": "NCHW", "dtype": "float32", "channels": 1, "image_size": 8, "scale": 1 / 255,
       "mean": [0.5], "std": [0.25], "resize": "bilinear_antialias", "class_names": ["a", "b", "c"]}


def tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def spec(tmp_path: Path) -> LoggedModelSpec:
    model = tiny_onnx(tmp_path / "model.onnx")
    example = tmp_path / "example.npy"
    np.save(example, np.zeros((1, 1, 8, 8), np.float32))
    return LoggedModelSpec(name="int8", path=str(model), example=str(example), model_type="onnx-int8",
                           metadata={"edgeqat": {"preprocessing": PRE}}, params={"model": "tiny"},
                           tags={"edgeqat.sha256": sha256_file(model)}, register_as="tiny-digits-int8",
                           version_tags={"sha256": sha256_file(model), "acc_int8": "0.9"})
