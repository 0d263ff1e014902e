"""The deploy target's CPU kind reaches the file: quant.target_isa=deploy:<target>, and a gate that
refuses a file whose int8 weights the target's kernels would saturate on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeqat.deploy.gate import arithmetic_mismatch
from edgeqat.deploy.targets import TargetError, load_target
from edgeqat.quant.isa import Isa, detect_cpu, resolve_target_isa


def _target(tmp_path: Path, isa: str | None) -> Path:
    path = tmp_path / "box.yaml"
    path.write_text(f"publish: {tmp_path / 'out'}\ngate: {{isa: {isa or 'null'}}}\n")
    return path


def test_quant_target_isa_can_name_a_deploy_target(tmp_path: Path) -> None:
    assert resolve_target_isa(f"deploy:{_target(tmp_path, 'avx2')}") is Isa.AVX2
    assert resolve_target_isa("deploy:local") is detect_cpu().isa  # local: the controller's own CPU
    with pytest.raises(TargetError, match="Unknown deploy target"):
        resolve_target_isa("deploy:nowhere")


def test_a_target_names_a_known_cpu_kind(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="gate.isa='avx3'"):
        load_target(str(_target(tmp_path, "avx3")))


def _conv_file(tmp_path: Path, w_max: int, dtype: int = TensorProto.INT8) -> Path:
    w = np.random.default_rng(0).integers(-w_max, w_max + 1, (8, 4, 3, 3))
    w.flat[0] = w_max
    zp = 0
    if dtype == TensorProto.UINT8:
        w, zp = w + 128, 128
    np_dtype = np.int8 if dtype == TensorProto.INT8 else np.uint8
    inits = [numpy_helper.from_array(w.astype(np_dtype), "w_q"), numpy_helper.from_array(np.float32(0.01), "w_s"),
             numpy_helper.from_array(np.array(zp, np_dtype), "w_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["y"], name="dense")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], inits)
    path = tmp_path / f"conv{w_max}_{dtype}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_int8_weights_beyond_64_are_refused_for_avx2_only(tmp_path: Path) -> None:
    wide = _conv_file(tmp_path, 127)
    reason = arithmetic_mismatch(wide, Isa.AVX2)
    assert reason is not None and "|127|" in reason and "quant.target_isa=avx2" in reason
    for exact in (Isa.AMX, Isa.AVX512_VNNI, Isa.ARM64_DOT):
        assert arithmetic_mismatch(wide, exact) is None
    assert arithmetic_mismatch(_conv_file(tmp_path, 64), Isa.AVX2) is None  # int7: exact on AVX2
    assert arithmetic_mismatch(_conv_file(tmp_path, 127, TensorProto.UINT8), Isa.AVX2) is None  # U8U8: exact
