"""Any timm CNN through the whole INT8 path, one model at a time: a pass, or the step that refused it.

``check_model(name)`` runs the steps ``edgeqat train`` runs, on a small input and a learnable
synthetic task so that it takes seconds, not an epoch: BUILD (``create_backbone``) -> a few FP32
steps (BN statistics and logits with a margin) -> PREPARE -> a few QAT steps -> CONVERT -> EXPORT
-> the ORT-optimized graph -> integer kernels -> top-1 agreement of ONNX Runtime with the integer
reference on random inputs. A step that raises stops the check and its one-line message is the
reason (our ``QuantizationError`` messages name the fallback: ``quant.float_modules=[...]`` or
``quant=fp32``). Nothing here ever counts a float model as INT8: the integer-kernel check of the
product itself (``assert_integer_kernels``) decides that, and the share of convs that run as
``QLinearConv`` is reported beside it.

``benchmarks/model_coverage.py`` runs ``FAMILIES`` (the smallest variant of each timm CNN family)
and writes the README's coverage table; the test suite runs a fast subset.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from edgeqat.errors import EdgeqatError

__all__ = ["FAMILIES", "CoverageResult", "CoverageSettings", "Stage", "check_model"]

# The smallest (or the one small) variant of each CNN family in timm, plus torchvision's ShuffleNetV2.
FAMILIES: dict[str, str] = {
    "resnet": "resnet10t",
    "resnext": "resnext26ts",
    "regnetx": "regnetx_002",
    "regnety": "regnety_002",
    "mobilenetv2": "mobilenetv2_035",
    "mobilenetv3": "mobilenetv3_small_050",
    "mobilenetv4": "mobilenetv4_conv_small_035",
    "efficientnet": "efficientnet_b0",
    "efficientnet_lite": "efficientnet_lite0",
    "efficientnetv2": "efficientnetv2_rw_t",
    "tinynet": "tinynet_e",
    "mnasnet": "mnasnet_small",
    "fbnet": "fbnetc_100",
    "mixnet": "mixnet_s",
    "ghostnet": "ghostnet_050",
    "rexnet": "rexnet_100",
    "lcnet": "lcnet_035",
    "mobileone": "mobileone_s0",
    "repvgg": "repvgg_a0",
    "dla": "dla46_c",
    "densenet": "densenet121",
    "hrnet": "hrnet_w18_small",
    "vgg": "vgg11_bn",
    "convnext": "convnext_atto",
    "convmixer": "convmixer_768_32",
    "cspnet": "cs3darknet_s",
    "darknet": "darknet17",
    "dpn": "dpn48b",
    "res2net": "res2net50_14w_8s",
    "resnest": "resnest14d",
    "sknet": "skresnet18",
    "vovnet": "ese_vovnet19b_slim_dw",
    "selecsls": "selecsls42b",
    "gernet": "gernet_s",
    "hgnetv2": "hgnetv2_b0",
    "repghost": "repghostnet_050",
    "shufflenet": "shufflenet_v2_x0_5",
}


class Stage(str, Enum):
    """The steps of one check, in order; a failure names the one it stopped at."""

    BUILD = "build"
    FP32_STEPS = "fp32_steps"
    PREPARE = "prepare"
    QAT_STEPS = "qat_steps"
    CONVERT = "convert"
    EXPORT = "export"
    ORT_GRAPH = "ort_graph"
    INTEGER_KERNELS = "integer_kernels"
    AGREEMENT = "agreement"
    DONE = "done"


@dataclass
class CoverageResult:
    """One model's way through the INT8 path (a row of the coverage table)."""

    family: str
    model: str
    passed: bool = False
    stage: Stage = Stage.BUILD  # the step reached: DONE when it passed, else the one that failed
    reason: str | None = None  # one line; for our own errors it names the fallback
    params_m: float | None = None
    qlinearconv: int = 0
    float_conv: int = 0
    float_nodes: int = 0
    integer_ops: int = 0
    top1_agreement: float | None = None
    max_step_drift: float | None = None
    within_step_fraction: float | None = None
    weight_range: str | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def conv_integer_fraction(self) -> float | None:
        convs = self.qlinearconv + self.float_conv
        return self.qlinearconv / convs if convs else None

    def to_dict(self) -> dict:
        return {**asdict(self), "stage": self.stage.value, "conv_integer_fraction": self.conv_integer_fraction}


@dataclass(frozen=True)
class CoverageSettings:
    """How hard each model is exercised; the defaults keep one small model to seconds on 2 cores.

    ``min_within_step``: the share of random inputs on which every ORT logit must lie within one
    output step of the integer reference (the converted graph with conv/linear computed as integers).
    A kernel that computes other integers (AVX2's saturating int16 pairs with ``weight_range=int8``)
    misses that on nearly every input by tens of steps; a rounding tie in an op ORT computes in float
    (add, mul, pooling, sigmoid) moves a few inputs by a step or a few. Top-1 agreement is reported,
    not judged: on a model trained for a few steps the logits of random inputs are too close for it
    to tell a tie from a wrong kernel. ``weight_range`` as ``quant.weight_range`` (auto: exact on
    this CPU).
    """

    image_size: int = 32
    num_classes: int = 10
    batch_size: int = 16
    fp32_steps: int = 4
    qat_steps: int = 4
    eval_images: int = 64
    min_within_step: float = 0.9
    weight_range: str = "auto"
    seed: int = 0


def check_model(name: str, family: str | None = None, *, workdir: str | Path,
                settings: CoverageSettings = CoverageSettings()) -> CoverageResult:
    """Take ``name`` through the INT8 path and report where it got to; never raises for the model's sake."""
    import torch

    result = CoverageResult(family=family or name, model=name)
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    stage = Stage.BUILD
    try:
        for stage, step in _steps(result, Path(workdir), settings):
            t0 = time.perf_counter()
            step()
            result.timings[stage.value] = round(time.perf_counter() - t0, 2)
        result.stage, result.passed = Stage.DONE, True
    except Exception as exc:  # the point is to report any failure as one row, not to stop the table
        result.stage, result.reason = stage, _one_line(exc)
    result.seconds = round(time.perf_counter() - start, 2)
    return result


def _steps(result: CoverageResult, workdir: Path, cfg: CoverageSettings):
    """Yield (stage, thunk) pairs sharing state through ``s``: one place that lists the path."""
    from edgeqat.models import create_backbone
    from edgeqat.quant import (
        assert_integer_kernels,
        compare_logits,
        convert,
        export_onnx,
        freeze_bn_stats,
        freeze_observers,
        inspect_ort_graph,
        integer_reference_logits,
        prepare_qat,
        resolve_weight_format,
        run_onnx,
    )
    from edgeqat.quant.verify import output_step

    s: dict = {}
    weights = resolve_weight_format(cfg.weight_range)
    result.weight_range = weights.range.value
    images, labels = _synthetic_task(cfg.num_classes, cfg.image_size, cfg.batch_size * max(cfg.fp32_steps, cfg.qat_steps, 1),
                                     cfg.seed)
    example = images[:2]

    def build() -> None:
        s["model"] = create_backbone(result.model, num_classes=cfg.num_classes, in_chans=3)
        result.params_m = round(sum(p.numel() for p in s["model"].parameters()) / 1e6, 3)

    def fp32() -> None:
        _train(s["model"], images, labels, cfg.batch_size, cfg.fp32_steps, lr=0.02)

    def prepare() -> None:
        s["prepared"] = prepare_qat(s["model"].eval(), example, dense_weight_qmax=weights.dense_qmax)

    def qat() -> None:
        _train(s["prepared"], images, labels, cfg.batch_size, cfg.qat_steps, lr=1e-3)
        freeze_observers(s["prepared"])
        freeze_bn_stats(s["prepared"])

    def convert_() -> None:
        s["converted"] = convert(s["prepared"])

    def export() -> None:
        s["path"] = export_onnx(s["converted"], example, workdir / result.model / "int8.onnx", weights=weights)

    def ort_graph() -> None:
        s["report"] = report = inspect_ort_graph(s["path"])
        result.qlinearconv = report.count("QLinearConv")
        result.float_conv = report.count("Conv") + report.count("FusedConv")
        result.float_nodes = len(report.float_nodes)
        result.integer_ops = report.integer_op_count

    def integer_kernels() -> None:
        assert_integer_kernels(s["report"], f"{result.model}'s INT8 file")

    def agreement() -> None:
        rng = np.random.default_rng(cfg.seed + 1)
        probe = rng.standard_normal((cfg.eval_images, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
        drift = compare_logits(run_onnx(s["path"], probe), integer_reference_logits(s["converted"], probe),
                               output_step(s["path"]))
        result.top1_agreement, result.max_step_drift = drift.top1_agreement, drift.max_step_drift
        result.within_step_fraction = drift.within_step_fraction
        if drift.within_step_fraction is None or drift.within_step_fraction < cfg.min_within_step:
            fix = (_drift_cause(s["path"], probe[:16]) if weights.exact_on_target
                   else "export for this CPU with quant.weight_range=auto")
            raise EdgeqatError(f"ONNX Runtime's logits are within one step of the integer reference on "
                               f"{drift.within_step_fraction or 0:.0%} of random inputs (< {cfg.min_within_step:.0%}; "
                               f"up to {drift.max_step_drift or 0:.0f} steps): {fix}")

    yield from [(Stage.BUILD, build), (Stage.FP32_STEPS, fp32), (Stage.PREPARE, prepare), (Stage.QAT_STEPS, qat),
                (Stage.CONVERT, convert_), (Stage.EXPORT, export), (Stage.ORT_GRAPH, ort_graph),
                (Stage.INTEGER_KERNELS, integer_kernels), (Stage.AGREEMENT, agreement)]


def _drift_cause(path: Path, images: np.ndarray) -> str:
    """Why ORT departs from the file's own QDQ definition, from ``localize_drift``'s sources.

    The weights are exact for this CPU, so what is left is either rounding ties (sources of exactly
    one step, on every CPU, grown by the layers after them) or a kernel computing other integers.
    """
    from edgeqat.quant import localize_drift

    report = localize_drift(path, images)
    ops = ", ".join(list(report.elements_by_op())[:3]) or "no op"
    if report.max_source_steps <= 1:
        return (f"ORT's integer run differs from the file's definition by 1-step rounding ties only (at {ops}; "
                f"{len(report.sources)} tensors), which the layers after them grow to {report.output_max_steps or 0:.0f} "
                "output steps: not a kernel error; keep the model FP32 (quant=fp32) if that is too much")
    return (f"a kernel computes other integers than the file defines (up to {report.max_source_steps} steps at {ops}): "
            "keep those ops float (quant.float_modules) or the model FP32 (quant=fp32)")


def _synthetic_task(num_classes: int, size: int, n: int, seed: int):
    """Normalised images and labels of the ``synthetic`` data source (class-specific stripes + noise)."""
    import torch

    from edgeqat.data.sources import synthetic

    data = synthetic(num_samples=n, num_classes=num_classes, size=size, channels=3, seed=seed)
    images = torch.from_numpy(np.asarray(data.images, dtype=np.float32)).permute(0, 3, 1, 2) / 255.0
    # contiguous NCHW, as the datamodule feeds: the permuted (channels-last) view sends every conv down
    # oneDNN's channels-last path, whose grouped-conv backward took minutes a step on an AVX2 CPU
    # (mobileone_s0, Zen 3) and made its runs differ from one another
    return ((images - 0.5) / 0.25).contiguous(), torch.from_numpy(data.labels)


def _train(model, images, labels, batch_size: int, steps: int, lr: float) -> None:
    """``steps`` SGD steps in training mode: BN statistics move, observers see real activations."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for i in range(steps):
        lo = (i * batch_size) % len(images)
        x, y = images[lo:lo + batch_size], labels[lo:lo + batch_size]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise EdgeqatError(f"training loss is {loss.item()} after {i} steps: the model diverges at lr={lr}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _one_line(exc: BaseException) -> str:
    """``Type: first line`` of an error. Ours are kept whole (their end names the fallback); another
    library's is cut to 300 characters and gets the innermost frame it came from."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}"
    if isinstance(exc, EdgeqatError):
        return line
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return line[:300] + where
