"""Activations left unrounded: the clamp stays, and together they explain a PTQ loss no layer does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeqat.quant import ptq_onnx, run_onnx
from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.sensitivity import float_weights_of, leave_float, quantized_layers
from edgeqat.quant.unround import quantized_activations, unround_activations


@pytest.fixture(scope="module")
def ptq(artifacts, tmp_path_factory: pytest.TempPathFactory) -> dict:
    a = artifacts["test_resnet"]
    tmp = tmp_path_factory.mktemp("unround")
    calibration = [a.images[i:i + 32] for i in range(0, 128, 32)]
    path = ptq_onnx(a.fp32_onnx, calibration, tmp / "ptq.onnx")
    return {"path": path, "fp32": a.fp32_onnx, "calibration": a.images[:128]}


def test_every_rounded_activation_is_listed_once_and_weights_are_not(ptq) -> None:
    model = onnx.load(str(ptq["path"]))
    constants = {init.name for init in model.graph.initializer}
    rounded = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants}
    activations = quantized_activations(model)
    assert len(activations) == len(set(activations)) and set(activations) == rounded
    assert model.graph.input[0].name in activations  # the image itself is rounded to uint8 first


def test_unrounding_everything_gives_back_the_float_model_relus_included(ptq, tmp_path: Path) -> None:
    """Every activation unrounded and every weight float is the FP32 model: ORT's quantizer folded the
    ReLUs into the QuantizeLinears, so a pair dropped without its clamp would lose them."""
    model = onnx.load(str(ptq["path"]))
    images = ptq["calibration"][:32]
    everything = leave_float(model, quantized_layers(model), float_weights_of(onnx.load(str(ptq["fp32"]))),
                             activations=quantized_activations(model))
    onnx.save(everything, str(tmp_path / "float.onnx"))
    constants = {init.name for init in everything.graph.initializer}
    assert not any(n.op_type == "QuantizeLinear" for n in everything.graph.node)
    assert all(n.input[0] in constants for n in everything.graph.node if n.op_type == "DequantizeLinear")  # biases
    fp32, int8 = run_onnx(ptq["fp32"], images), run_onnx(ptq["path"], images)
    unrounded = run_onnx(tmp_path / "float.onnx", images)
    # per image, what is left is the biases' int32 rounding (ORT keeps them quantized) and, on a few images,
    # a clamp ORT's calibrated range sets tighter than the image needs: far below the INT8 file's error
    error = {name: np.median(np.abs(out - fp32).max(1)) for name, out in (("unrounded", unrounded), ("int8", int8))}
    assert error["unrounded"] < min(1e-3, error["int8"] / 20), error

    dropped = onnx.load(str(ptq["path"]))  # the same pairs removed outright, clamp and all
    unround_activations(dropped, quantized_activations(dropped))
    for node in dropped.graph.node:
        if node.op_type == "Clip":
            node.input[1:] = []
    onnx.save(dropped, str(tmp_path / "dropped.onnx"))
    dropped_error = np.median(np.abs(run_onnx(tmp_path / "dropped.onnx", images) - fp32).max(1))
    assert dropped_error > error["int8"], dropped_error  # the ReLUs were in the clamps


def test_unrounding_refuses_a_tensor_that_is_not_a_rounded_activation(ptq) -> None:
    model = onnx.load(str(ptq["path"]))
    weight = next(i.name for i in model.graph.initializer if i.name.endswith("_quantized"))
    with pytest.raises(QuantizationError, match="is not a quantized activation"):
        unround_activations(model, [weight])
