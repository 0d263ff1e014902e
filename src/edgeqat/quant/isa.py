"""The CPU's integer arithmetic is part of the target: which ISA decides what ORT's int8 kernels compute.

ONNX Runtime's MLAS kernels multiply uint8 activations by int8 weights with different instructions
per CPU, and they do not all compute the same numbers:

* AMX (``tdpbusd``), AVX-512 VNNI and AVX-VNNI (``vpdpbusds``) and ARM's dot product (``sdot``/``udot``)
  add four u8*s8 products straight into int32: exact.
* AVX2 and AVX-512BW *without* VNNI use ``vpmaddubsw``, which adds two adjacent products into a
  *saturating int16* before widening. With |w| up to 127 a pair reaches 2*255*127 = 64770 > 32767, so
  a dense conv's output can be off by hundreds of steps (``isa-probe.py``: 11 % of outputs, up to 229
  steps on one 16-channel conv). With |w| <= 64 a pair stays within 2*255*64 = 32640: exact. ORT's
  docs name this caveat and two ways out: 7-bit weights (``reduce_range``) or uint8 weights (the U8U8
  kernels widen to int16 and use ``vpmaddwd``: exact).
* Only the dense kernels saturate: MLAS's symmetric conv ("ConvSym"), im2col + u8s8 GEMM (dense
  convs with another weight zero point, QGemm, MatMul). Depthwise convs widen first and are exact on
  every CPU (``mlas/lib/qdwconv.cpp``, ``convsym.cpp``; measured in ``tests/unit/quant/test_isa.py``).

``detect_cpu`` reads the flags the Linux kernel reports (the same CPUID bits MLAS dispatches on);
``emulate_u8s8_conv`` is a numpy model of both arithmetics, so a test on any CPU can check ORT against
the one this CPU should compute, and an AVX2 target can be predicted from a machine that is not one.
"""

from __future__ import annotations

import difflib
import platform
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from edgeqat.quant.errors import QuantizationError

__all__ = ["CpuInfo", "Isa", "detect_cpu", "emulate_u8s8_conv", "isa_from_flags", "resolve_target_isa"]

_CPUINFO = Path("/proc/cpuinfo")
INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1


class Isa(str, Enum):
    """The instruction set that decides ORT's int8 path, best first (what MLAS dispatches on)."""

    AMX = "amx"
    AVX512_VNNI = "avx512_vnni"
    AVX_VNNI = "avx_vnni"
    AVX512 = "avx512"  # AVX-512BW without VNNI (Skylake-SP/X, Cascade Lake without DL Boost)
    AVX2 = "avx2"
    SSE = "sse"  # no AVX2: MLAS widens to int16 (Linux builds; MSVC builds use pmaddubsw, see README)
    ARM64_DOT = "arm64_dotprod"
    ARM64 = "arm64"  # no dot product: smull/sadalp, exact for symmetric weights (never -128)
    UNKNOWN = "unknown"

    @property
    def saturates_u8s8(self) -> bool:
        """True where dense u8*s8 kernels add product pairs into a saturating int16 (``vpmaddubsw``)."""
        return self in (Isa.AVX2, Isa.AVX512)

    @property
    def exact_weight_bound(self) -> int:
        """Largest |stored int8 weight| the dense u8s8 kernels compute exactly with any u8 activation."""
        return 64 if self.saturates_u8s8 else 128

    @classmethod
    def names(cls) -> list[str]:
        return [isa.value for isa in cls if isa is not Isa.UNKNOWN]


@dataclass(frozen=True)
class CpuInfo:
    """The CPU a figure was measured on: its model name and the ISA that decides its int8 arithmetic."""

    model: str
    isa: Isa

    def tags(self) -> dict[str, str]:
        """``edgeqat.cpu`` / ``edgeqat.isa``: every run records where its numbers come from."""
        return {"edgeqat.cpu": self.model, "edgeqat.isa": self.isa.value}


def isa_from_flags(flags: set[str], machine: str) -> Isa:
    """The int8-deciding ISA from ``/proc/cpuinfo`` flags (x86 ``flags``, ARM ``Features``)."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "x86", "i686"):
        if {"amx_tile", "amx_int8"} <= flags:
            return Isa.AMX
        if "avx512_vnni" in flags:
            return Isa.AVX512_VNNI
        if "avx_vnni" in flags:
            return Isa.AVX_VNNI
        if "avx512bw" in flags:
            return Isa.AVX512
        if "avx2" in flags:
            return Isa.AVX2
        return Isa.SSE
    if machine in ("aarch64", "arm64"):
        return Isa.ARM64_DOT if "asimddp" in flags else Isa.ARM64
    return Isa.UNKNOWN


def detect_cpu(cpuinfo: Path = _CPUINFO, machine: str | None = None) -> CpuInfo:
    """This machine's CPU model and int8 ISA (``UNKNOWN`` where the kernel does not report flags)."""
    machine = machine or platform.machine()
    model, flags = "", set()
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if not text:
        return CpuInfo(model or platform.processor() or machine, Isa.UNKNOWN)
    return CpuInfo(model or platform.processor() or machine, isa_from_flags(flags, machine))


DEPLOY_PREFIX = "deploy:"


def resolve_target_isa(name: str | None) -> Isa:
    """``quant.target_isa``: None means the exporting CPU's own; ``deploy:<target>`` that deploy
    target's CPU kind (``gate.isa``, itself None for the controller's own: this CPU); otherwise one
    of ``Isa.names()``."""
    if name is None:
        return detect_cpu().isa
    if str(name).startswith(DEPLOY_PREFIX):
        from edgeqat.deploy.targets import load_target

        return resolve_target_isa(load_target(str(name)[len(DEPLOY_PREFIX):]).gate.isa)
    try:
        return Isa(str(name).lower())
    except ValueError:
        hint = difflib.get_close_matches(str(name).lower(), Isa.names(), n=1)
        raise QuantizationError(
            f"Unknown quant.target_isa {name!r}: choose one of {', '.join(Isa.names())}, deploy:<target> "
            "or null (this CPU)"
            + (f". Did you mean {hint[0]!r}?" if hint else "")
        ) from None


def emulate_u8s8_conv(x: np.ndarray, w: np.ndarray, *, pads: int = 0, saturate: bool) -> np.ndarray:
    """Integer accumulators of a dense conv as MLAS computes them: exact, or ``vpmaddubsw``'s way.

    ``x`` is uint8 (N, C, H, W), ``w`` the *stored* int8 weights (O, C, kh, kw), stride 1, no groups;
    zero points are applied by the caller (MLAS corrects them outside the product loop). With
    ``saturate`` the reduction runs over ORT's im2col order (tap-major, channel-minor; MLAS packs K
    in fours) and each pair ``(2j, 2j + 1)`` of products is clipped to int16 before the int32 sum,
    which predicts ORT on AVX2 bit for bit (``test_isa``). Returns int64 (N, O, H', W').
    """
    x64 = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pads, pads), (pads, pads)))
    w64 = w.astype(np.int64)
    out_c, in_c, kh, kw = w64.shape
    oh, ow = x64.shape[2] - kh + 1, x64.shape[3] - kw + 1
    # (N, kh*kw*C, H', W') patches in im2col order, then products per output channel.
    patches = np.stack([x64[:, c, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw) for c in range(in_c)], 1)
    weights = w64.transpose(0, 2, 3, 1).reshape(out_c, -1)  # (O, kh*kw*C), same order
    products = patches[:, None] * weights[None, :, :, None, None]  # (N, O, K, H', W')
    if not saturate:
        return products.sum(2)
    if products.shape[2] % 2:
        products = np.concatenate([products, np.zeros_like(products[:, :, :1])], 2)
    pairs = products[:, :, 0::2] + products[:, :, 1::2]
    return np.clip(pairs, INT16_MIN, INT16_MAX).sum(2)
