"""ORT's int32 bias: simulated by the fake-quant graph, already applied in the exported file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeqat.quant import freeze_bn_stats, prepare_qat
from edgeqat.quant.bias_rounding import BiasRounding, round_bias
from tests.unit.quant.conftest import PARITY_MODELS
from tests.unit.quant.tiny import TinyMobile, synthetic_batch


def test_round_bias_lands_on_the_grid_and_saturates_at_int32() -> None:
    bias = torch.tensor([0.26, -0.74, 1e12])
    scale = torch.tensor([0.1, 0.5, 1e-3])
    rounded = round_bias(bias, scale)
    assert torch.allclose(rounded[:2], torch.tensor([0.3, -0.5]))
    assert rounded[2].item() == pytest.approx((2**31 - 1) * 1e-3)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_exported_bias_is_already_on_orts_int32_grid(artifacts, name: str) -> None:
    """ORT stores the bias of an integer conv/gemm as round(b / (x_scale * w_scale)); ours must not move.

    Before bias rounding, the folded BN biases of these models were up to half a step off the grid.
    """
    model = onnx.load(str(artifacts[name].int8_onnx))
    values, producer = _constants(model), {o: n for n in model.graph.node for o in n.output}
    checked = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        x_dq, w_dq = producer.get(node.input[0]), producer.get(node.input[1])
        if x_dq is None or w_dq is None or x_dq.op_type != w_dq.op_type or x_dq.op_type != "DequantizeLinear":
            continue  # a float conv (float_stem=True)
        steps = values[node.input[2]] / (values[x_dq.input[1]] * values[w_dq.input[1]])
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3, err_msg=node.name)
        checked += 1
    assert checked > 0


def _roundings(prepared: torch.nn.Module) -> list[BiasRounding]:
    return [m for m in prepared.modules() if isinstance(m, BiasRounding)]


def test_folded_bias_rounding_applies_only_while_bn_uses_running_stats() -> None:
    x = synthetic_batch(8, seed=3)[0]
    prepared = prepare_qat(TinyMobile().eval(), x[:2])
    roundings = _roundings(prepared)
    folded = [m for m in roundings if m.folds_bn]
    plain = [m for m in roundings if not m.folds_bn]  # SE convs and the head carry their own bias
    assert folded and plain
    prepared.train()
    prepared(x)
    assert not any(m.active for m in folded) and all(m.active for m in plain)
    prepared.eval()
    prepared(x)
    assert all(m.active for m in roundings)
    freeze_bn_stats(prepared)
    prepared.train()
    prepared(x)
    assert all(m.active for m in roundings)


def test_eval_forward_moves_each_output_by_its_bias_rounding() -> None:
    torch.manual_seed(0)
    model = TinyMobile().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.bias, 0.0, 0.5)  # a folded bias far from the int32 grid
    x = synthetic_batch(16, seed=4)[0]
    prepared = prepare_qat(model, x[:2])
    shifts: list[float] = []
    for m in _roundings(prepared):
        m.register_forward_hook(lambda mod, args, out: shifts.append((out - args[0]).abs().max().item()))
    prepared.train()
    with torch.no_grad():
        prepared(x)  # observe scales
        prepared.eval()
        shifts.clear()
        prepared(x)
        assert len(shifts) == len(_roundings(prepared)) and max(shifts) > 0
        for m in _roundings(prepared):
            m.active = False
        shifts.clear()
        prepared.graph_module(x)
    assert max(shifts) == 0
    assert not list(BiasRounding(1, folds_bn=True).state_dict())  # checkpoints keep their keys
