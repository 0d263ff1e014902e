"""Step VERIFY (numbers side): accuracy and agreement in ONNX Runtime, latency, file size."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeqat.quant.ort_session import cpu_session

__all__ = ["LogitDrift", "VerifyResult", "compare_logits", "evaluate_onnx", "file_size_mb", "measure_latency_ms",
           "output_step", "run_onnx"]


@dataclass(frozen=True)
class LogitDrift:
    """How far ORT's logits are from a reference's: argmax agreement and |ORT - reference| in steps.

    Steps are the output's quantization step (the scale of the DequantizeLinear producing the
    logits); ``within_step_fraction`` is the share of images whose logits all lie within one step.
    The step figures are None for a float output.
    """

    top1_agreement: float
    max_step_drift: float | None = None
    mean_step_drift: float | None = None
    within_step_fraction: float | None = None


def compare_logits(logits: np.ndarray, reference: np.ndarray, step: float | None,
                   what: str = "reference_logits") -> LogitDrift:
    """:class:`LogitDrift` of ``logits`` against ``reference`` (same (N, K) shape; ``what`` names it in errors)."""
    reference = np.asarray(reference)
    if reference.shape != logits.shape:
        raise ValueError(f"{what} shape {reference.shape} does not match the model output {logits.shape}")
    agreement = float((reference.argmax(1) == logits.argmax(1)).mean())
    if not step:
        return LogitDrift(agreement)
    drift = np.abs(logits - reference) / step
    within = float((drift.max(1) <= 1 + 1e-3).mean())  # 1e-3: float error of the dequantized logits
    return LogitDrift(agreement, float(drift.max()), float(drift.mean()), within)


@dataclass
class VerifyResult:
    """Accuracy of an ONNX model in ORT and how far it is from reference (torch) logits.

    The flat drift fields compare with ``reference_logits``: for a QAT model the converted graph
    computed in integers (``integer_reference``), so 0 steps where the target's kernels compute what
    the ONNX operators define, and tens of steps on many images where a kernel saturates (``isa``).
    ``fake_quant`` compares with the float fake-quant model QAT trained: it also differs where a
    value is a rounding tie (k + 1/2 to within float error, a few activations per ten million, on
    every CPU) and deep nets carry such a step into several output steps on the few images holding one.
    """

    accuracy: float
    top1_agreement: float | None
    per_class_accuracy: list[float]
    confusion: np.ndarray  # (num_classes, num_classes), rows = true class, columns = prediction
    n: int
    max_step_drift: float | None = None
    mean_step_drift: float | None = None
    within_step_fraction: float | None = None
    fake_quant: LogitDrift | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable form (NaN per-class accuracy for classes absent from the labels -> None)."""
        return {
            "accuracy": self.accuracy,
            "top1_agreement": self.top1_agreement,
            "max_step_drift": self.max_step_drift,
            "mean_step_drift": self.mean_step_drift,
            "within_step_fraction": self.within_step_fraction,
            "fake_quant": None if self.fake_quant is None else asdict(self.fake_quant),
            "per_class_accuracy": [None if np.isnan(a) else a for a in self.per_class_accuracy],
            "confusion": self.confusion.tolist(),
            "n": self.n,
        }


def output_step(onnx_path: str | Path) -> float | None:
    """The quantization step of the model's output: the scale of the DequantizeLinear producing it.

    None for a float output (an FP32 model, or a float op after the last quantized one).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(model.graph.output[0].name)
    while node is not None and node.op_type in ("Identity", "Reshape", "Flatten", "Squeeze"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear":
        return None
    scales = {init.name: init for init in model.graph.initializer}
    scale = scales.get(node.input[1])
    if scale is None:
        return None
    value = numpy_helper.to_array(scale)
    return float(value) if value.size == 1 else None


def run_onnx(onnx_path: str | Path, images: np.ndarray, batch_size: int = 64, threads: int = 1) -> np.ndarray:
    """Logits of ``onnx_path`` on ``images`` (N, C, H, W float32), computed in batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    session = cpu_session(onnx_path, threads=threads)
    name = session.get_inputs()[0].name
    images = np.ascontiguousarray(images, dtype=np.float32)
    outputs = [session.run(None, {name: images[i:i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.empty((0, 0), np.float32)


def evaluate_onnx(
    onnx_path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    reference_logits: np.ndarray | None = None,
    batch_size: int = 64,
    fake_quant_logits: np.ndarray | None = None,
) -> VerifyResult:
    """Accuracy (overall, per class, confusion) of the ONNX model run in ORT.

    Args:
        images: (N, C, H, W) float32, already normalized as in training.
        labels: (N,) integer class ids.
        reference_logits: (N, K) logits of the torch model on the same images (for QAT: its integer
            reference); gives ``top1_agreement``, the fraction of equal argmax, and the drift in
            output steps.
        fake_quant_logits: (N, K) logits of the float fake-quant model, for ``fake_quant``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64).ravel()
    if images.ndim != 4 or len(images) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"images must be (N, C, H, W) with N = len(labels) > 0; got images {images.shape}, labels {labels.shape}"
        )
    logits = run_onnx(onnx_path, images, batch_size=batch_size)
    num_classes = logits.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{labels.min()}, {labels.max()}]")
    preds = logits.argmax(1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    step = output_step(onnx_path)
    reference = compare_logits(logits, reference_logits, step) if reference_logits is not None else None
    return VerifyResult(
        accuracy=float((preds == labels).mean()),
        top1_agreement=None if reference is None else reference.top1_agreement,
        per_class_accuracy=[float(a) for a in per_class],
        confusion=confusion,
        n=len(labels),
        max_step_drift=None if reference is None else reference.max_step_drift,
        mean_step_drift=None if reference is None else reference.mean_step_drift,
        within_step_fraction=None if reference is None else reference.within_step_fraction,
        fake_quant=None if fake_quant_logits is None else compare_logits(logits, fake_quant_logits, step, "fake_quant_logits"),
    )


def measure_latency_ms(
    onnx_path: str | Path, input_shape: tuple[int, ...], threads: int = 1, warmup: int = 10, iters: int = 50
) -> float:
    """Median wall time of one ORT run on a random float32 input of ``input_shape``, in ms."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    session = cpu_session(onnx_path, threads=threads)
    name = session.get_inputs()[0].name
    feed = {name: np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def file_size_mb(onnx_path: str | Path) -> float:
    """Size on disk in MB (1e6 bytes), external data files included."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = Path(onnx_path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for init in model.graph.initializer
        if uses_external_data(init)
        for entry in init.external_data
        if entry.key == "location"
    }
    total += sum((path.parent / loc).stat().st_size for loc in locations)
    return total / 1e6
