"""The CPU's int8 arithmetic: ISA detection, and ORT checked against the arithmetic this CPU's ISA predicts.

Every test here holds on every CPU: each one asks ORT for what *this* CPU's ISA computes (exact int32
sums on VNNI/AMX/ARM, ``vpmaddubsw``'s saturating int16 pairs on AVX2 / AVX-512BW without VNNI) and
states per ISA what it expects, instead of loosening a tolerance for all of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeqat.quant import Isa, QuantizationError, detect_cpu, emulate_u8s8_conv
from edgeqat.quant.isa import isa_from_flags, resolve_target_isa

CPU = detect_cpu()
OUT_SCALE, OUT_ZERO = np.float32(97.3), 128  # one output step = 97.3 accumulator units


@pytest.mark.parametrize(("machine", "flags", "isa"), [
    ("x86_64", "avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8", Isa.AMX),  # Sapphire Rapids
    ("x86_64", "avx2 avx512f avx512bw avx512_vnni", Isa.AVX512_VNNI),  # Ice Lake, Zen 4
    ("x86_64", "avx2 avx_vnni", Isa.AVX_VNNI),  # Alder Lake
    ("x86_64", "avx2 avx512f avx512bw", Isa.AVX512),  # Skylake-SP: vpmaddubsw on zmm
    ("x86_64", "sse4_2 avx avx2 fma bmi2", Isa.AVX2),  # Zen 3, Haswell
    ("x86_64", "sse4_1 sse4_2", Isa.SSE),
    ("aarch64", "fp asimd asimddp", Isa.ARM64_DOT),
    ("aarch64", "fp asimd", Isa.ARM64),
    ("riscv64", "", Isa.UNKNOWN),
])
def test_isa_from_cpu_flags(machine: str, flags: str, isa: Isa) -> None:
    assert isa_from_flags(set(flags.split()), machine) is isa
    assert isa.saturates_u8s8 is (isa in (Isa.AVX2, Isa.AVX512))
    assert isa.exact_weight_bound == (64 if isa.saturates_u8s8 else 128)


def test_detect_cpu_reads_model_and_flags(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx2 fma\n\n"
                   "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx2 fma\n")
    assert detect_cpu(x86, machine="x86_64") == detect_cpu(x86, machine="x86_64")
    cpu = detect_cpu(x86, machine="x86_64")
    assert (cpu.model, cpu.isa) == ("AMD EPYC 7B13", Isa.AVX2)
    assert cpu.tags() == {"edgeqat.cpu": "AMD EPYC 7B13", "edgeqat.isa": "avx2"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes asimddp\n")
    assert detect_cpu(arm, machine="aarch64").isa is Isa.ARM64_DOT
    assert detect_cpu(tmp_path / "missing", machine="x86_64").isa is Isa.UNKNOWN


def test_target_isa_names() -> None:
    assert resolve_target_isa(None) is CPU.isa  # the exporting CPU
    assert resolve_target_isa("AVX2") is Isa.AVX2
    with pytest.raises(QuantizationError, match=r"Unknown quant.target_isa 'avx512vnni'.*Did you mean 'avx512_vnni'"):
        resolve_target_isa("avx512vnni")


# ------------------------------------------------------------------ ORT against the predicted arithmetic


def _qlinear_conv(x: np.ndarray, w: np.ndarray, w_zero: int, group: int = 1) -> np.ndarray:
    """ORT's QLinearConv (input scale 1, zero point 0; weight scale 1): the uint8 output."""
    out_c = w.shape[0]
    wtype = np.uint8 if w.dtype == np.uint8 else np.int8
    init = numpy_helper.from_array
    inits = [init(np.array(1.0, np.float32), "xs"), init(np.array(0, np.uint8), "xz"),
             init(np.ones(out_c, np.float32), "ws"), init(np.full(out_c, w_zero, wtype), "wz"), init(w, "w"),
             init(np.array(OUT_SCALE), "ys"), init(np.array(OUT_ZERO, np.uint8), "yz")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                            pads=[1] * 4 if w.shape[2] == 3 else [0] * 4, group=group)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0].astype(np.int64)


def _requantize(acc: np.ndarray) -> np.ndarray:
    return np.clip(np.round(acc / OUT_SCALE) + OUT_ZERO, 0, 255).astype(np.int64)


def _predict(x: np.ndarray, w: np.ndarray, w_zero: int, saturate: bool) -> np.ndarray:
    """MLAS: raw u8 x raw stored weights (saturating pairs or not), then the zero-point correction."""
    pads = 1 if w.shape[2] == 3 else 0
    acc = emulate_u8s8_conv(x, w, pads=pads, saturate=saturate)
    if w_zero:
        acc -= w_zero * emulate_u8s8_conv(x, np.ones_like(w), pads=pads, saturate=False)
    return _requantize(acc)


def _case(in_c: int, wmax: int, w_zero: int, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (2, in_c, 6, 6), dtype=np.uint8)
    w = (rng.integers(-wmax, wmax + 1, (16, in_c, k, k)) + w_zero).astype(np.int8)
    return x, w


@pytest.mark.parametrize(("in_c", "k", "wmax", "w_zero"), [
    (16, 3, 127, 0),  # ORT's symmetric conv kernel, full int8 range
    (16, 3, 126, -1),  # im2col + u8s8 GEMM (gemm_routing's zero point)
    (15, 3, 127, 0),  # odd depth: ORT pairs products across filter taps
    (32, 1, 127, 0),  # 1x1 conv
    (16, 3, 64, 0),  # int7
])
def test_ort_dense_conv_computes_what_this_cpus_isa_predicts(in_c: int, k: int, wmax: int, w_zero: int) -> None:
    """Bit for bit, on any CPU: exact sums where the ISA is exact, ``vpmaddubsw``'s where it saturates.

    On an AVX2 or AVX-512BW CPU without VNNI this checks the numpy model of the saturation against ORT
    itself (it matched every output on an AMD EPYC Zen 3); elsewhere it checks that ORT is exact.
    """
    x, w = _case(in_c, wmax, w_zero, k)
    np.testing.assert_array_equal(_qlinear_conv(x, w, w_zero), _predict(x, w, w_zero, saturate=CPU.isa.saturates_u8s8))


def test_full_range_int8_weights_saturate_only_where_the_isa_says() -> None:
    """The reason ``quant.weight_range=auto`` picks int7 on AVX2: full-range weights are far off there."""
    x, w = _case(16, 127, 0)
    error = np.abs(_qlinear_conv(x, w, 0) - _predict(x, w, 0, saturate=False))
    if CPU.isa.saturates_u8s8:  # measured on Zen 3: 11 % of outputs wrong, by up to 215 steps
        assert error.max() > 50 and (error > 0).mean() > 0.02, (error.max(), (error > 0).mean())
    else:
        assert error.max() == 0
    x7, w7 = _case(16, 64, 0)  # int7: exact everywhere, |pair| <= 2 * 255 * 64 = 32640
    assert np.array_equal(_qlinear_conv(x7, w7, 0), _predict(x7, w7, 0, saturate=False))


@pytest.mark.parametrize("storage", ["depthwise_int8", "u8_weights"])
def test_kernels_that_widen_first_are_exact_on_every_cpu(storage: str) -> None:
    """Why int7 / u8 touch only dense kernels: depthwise and u8*u8 are exact with full-range weights."""
    rng = np.random.default_rng(1)
    if storage == "depthwise_int8":
        x = rng.integers(0, 256, (2, 32, 6, 6), dtype=np.uint8)
        w = rng.integers(-127, 128, (32, 1, 3, 3)).astype(np.int8)
        exact = np.concatenate([_predict(x[:, c:c + 1], w[c:c + 1], 0, saturate=False) for c in range(32)], 1)
        np.testing.assert_array_equal(_qlinear_conv(x, w, 0, group=32), exact)
    else:
        x, w = _case(16, 127, 0)
        stored = (w.astype(np.int16) + 128).astype(np.uint8)
        np.testing.assert_array_equal(_qlinear_conv(x, stored, 128), _predict(x, w, 0, saturate=False))


def test_ort_int8_matmul_computes_what_this_cpus_isa_predicts() -> None:
    """QLinearMatMul (what linear heads run on) uses the same u8s8 GEMM: same prediction, same ISA split."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (8, 64), dtype=np.uint8)
    b = rng.integers(-127, 128, (64, 16)).astype(np.int8)
    init = numpy_helper.from_array
    inits = [init(np.array(1.0, np.float32), "as"), init(np.array(0, np.uint8), "az"), init(b, "b"),
             init(np.array(1.0, np.float32), "bs"), init(np.array(0, np.int8), "bz"),
             init(np.array(OUT_SCALE), "ys"), init(np.array(OUT_ZERO, np.uint8), "yz")]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    graph = helper.make_graph([node], "matmul", [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    as_conv = _predict(a[:, :, None, None], b.T[:, :, None, None].copy(), 0, saturate=CPU.isa.saturates_u8s8)
    np.testing.assert_array_equal(y.astype(np.int64), as_conv[:, :, 0, 0])
