"""Where an INT8 file's ORT execution departs from its own QDQ definition, op by op.

``int8/max_step_drift`` says how far ORT's logits are from torch's fake-quant, not why. Two causes
look alike at the output:

* a kernel that computes other integers (AVX2's u8s8 kernels add product pairs into a saturating
  int16, ``isa.py``): wrong by many steps, in many activations, wherever the weights reach it;
* a rounding tie: an activation whose exact value is k + 1/2 to within float error (ORT's integer
  kernel rounds ``acc * multiplier`` half to even, a float conv lands on either side), one step
  apart, in a few activations per million, on every CPU. Later layers then carry that one step
  into several output steps: the network's own gain, not the kernel's.

:func:`localize_drift` runs the file twice in ORT, ``ORT_ENABLE_ALL`` (the integer kernels the
target runs) and ``ORT_DISABLE_ALL`` (each QDQ group as DequantizeLinear -> float op ->
QuantizeLinear: the file's definition, computed in float like torch's fake-quant), with every
quantized activation exposed, and names the *sources*: quantized tensors that differ on an image where
every quantized input of the float sub-graph producing them agrees. A saturating kernel shows as
sources of many steps; ties as sources of exactly one.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeqat.quant.verify import output_step

__all__ = ["DriftReport", "DriftSource", "localize_drift"]

_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class DriftSource:
    """A quantized tensor that differs although its quantized inputs agree (on ``images`` images)."""

    tensor: str
    ops: str  # the float sub-graph that produces it, e.g. "Conv", "(Add+Clip)", "(Conv+Relu)"
    elements: int  # differing elements, summed over those images
    max_steps: int  # largest difference, in the tensor's own quantization steps
    images: int


@dataclass
class DriftReport:
    """Sources of difference between ORT's integer execution and the file's QDQ definition."""

    n_images: int
    activations_per_image: int  # quantized activation elements compared per image
    images_differing: int  # images on which any quantized activation differs (sources and what follows)
    output_max_steps: float | None  # largest |integer - definition| at the output, in output steps
    sources: list[DriftSource] = field(default_factory=list)

    @property
    def max_source_steps(self) -> int:
        """0: ORT computes the definition exactly; 1: rounding ties only; more: a kernel computes other integers."""
        return max((s.max_steps for s in self.sources), default=0)

    def elements_by_op(self) -> dict[str, int]:
        """Differing source elements per producing sub-graph, most first."""
        counts: Counter[str] = Counter()
        for s in self.sources:
            counts[s.ops] += s.elements
        return dict(counts.most_common())

    def to_dict(self) -> dict:
        return {**asdict(self), "max_source_steps": self.max_source_steps, "elements_by_op": self.elements_by_op()}


def localize_drift(onnx_path: str | Path, images: np.ndarray, batch_size: int = 64) -> DriftReport:
    """Compare ORT's optimized and unoptimized runs of a QDQ file on ``images`` (N, C, H, W float32)."""
    import onnx

    model = onnx.load(str(onnx_path))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in initializers]
    outputs = {o.name for o in graph.output}
    graph.output.extend(onnx.ValueInfoProto(name=q.output[0]) for q in quantizers if q.output[0] not in outputs)
    final = graph.output[0].name

    with tempfile.TemporaryDirectory() as tmp:
        exposed = Path(tmp) / "exposed.onnx"
        onnx.save(model, str(exposed))
        integer, definition = (_run_all(exposed, images, batch_size, level) for level in ("ENABLE_ALL", "DISABLE_ALL"))

    sources, differing, compared = [], np.zeros(len(images), bool), 0
    for q in quantizers:
        name = q.output[0]
        diff = np.abs(integer[name].astype(np.int32) - definition[name].astype(np.int32)).reshape(len(images), -1)
        compared += diff.shape[1]
        differing |= diff.any(1)
        producer = producers.get(q.input[0])
        if producer is None:
            continue
        inputs_agree = np.ones(len(images), bool)
        for src in _quantized_inputs(producer, producers, initializers):
            if src not in integer:  # a Q of a constant: not compared
                continue
            inputs_agree &= (integer[src] == definition[src]).reshape(len(images), -1).all(1)
        local = diff[inputs_agree]
        if local.any():
            sources.append(DriftSource(tensor=name, ops=_chain(producer, producers), elements=int((local > 0).sum()),
                                       max_steps=int(local.max()), images=int(local.any(1).sum())))

    step = output_step(onnx_path)
    out_steps = float(np.abs(integer[final] - definition[final]).max() / step) if step else None
    return DriftReport(n_images=len(images), activations_per_image=compared, images_differing=int(differing.sum()),
                       output_max_steps=out_steps, sources=sources)


def _run_all(path: Path, images: np.ndarray, batch_size: int, level: str) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed_name = session.get_inputs()[0].name
    images = np.ascontiguousarray(images, dtype=np.float32)
    batches = [session.run(names, {feed_name: images[i:i + batch_size]}) for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([b[k] for b in batches]) for k, name in enumerate(names)}


def _quantized_inputs(node, producers: dict, initializers: set[str]) -> list[str]:
    """Quantized activations read (through DequantizeLinear) by the float sub-graph ending in ``node``."""
    found: list[str] = []
    for name in node.input:
        parent = producers.get(name)
        if parent is None:
            continue
        if parent.op_type == "DequantizeLinear":
            if parent.input[0] not in initializers:
                found.append(parent.input[0])
        elif parent.op_type != "QuantizeLinear":
            found.extend(_quantized_inputs(parent, producers, initializers))
    return found


def _chain(node, producers: dict) -> str:
    parts = [_chain(p, producers) for name in node.input
             if (p := producers.get(name)) is not None and p.op_type not in _QDQ]
    return f"({'+'.join([*parts, node.op_type])})" if parts else node.op_type
