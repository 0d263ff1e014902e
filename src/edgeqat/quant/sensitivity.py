"""Per-layer sensitivity of an INT8 file: what leaving one layer float buys, measured in ONNX Runtime.

A model that loses accuracy in INT8 raises two questions: which layers are to blame, and what it
costs to keep them float. Both are answered on the exported file, in the runtime that will run it
(NNCF's HAWQ and AIMET's AMP answer them for their own runtimes):

* :func:`leave_float` writes a copy of the file in which the named convs/gemms compute in float with
  their weights *before rounding* (the trained ones: from ``export_onnx(..., float_weights=...)`` for
  QAT, from the FP32 file for ORT's PTQ, :func:`float_weights_of`). What else stays float is the
  :data:`SCOPES` choice (``quant.float_scope``):

  - ``weights``: only the weights. The layer's input keeps its producer's DequantizeLinear and its
    output its QuantizeLinear, exactly what a module in ``quant.float_modules`` exports: the
    neighbours stay integer, so a row measures that layer's weight rounding alone.
  - ``layer``: the weights and the input activation. The layer reads the float tensor its input was
    quantized from, clipped to the quantized range, so the uint8 rounding of that activation is
    gone too. Where that tensor is a conv's output, ORT can no longer fuse that conv's
    requantization and runs it in float as well (int8 weights and input, float output): the row
    then removes one activation's rounding more, and pays for that conv's float output too.

  ``keep_float_convs_float`` stops ORT from quantizing the float weights back.
* :func:`layer_sensitivity` evaluates one such file per layer on a labelled split and reads each
  layer's share of the INT8 file's kernel time from ORT's profiler; every row's file is checked in
  ORT's optimized graph to run exactly one more float conv/gemm than the INT8 file (``weights``), or
  at least one more (``layer``).
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.onnx_passes import apply_onnx_passes
from edgeqat.quant.unround import clamp_node, quantized_activations, unround_activations

__all__ = ["SCOPES", "LayerSensitivity", "SensitivityReport", "float_weights_of", "layer_sensitivity", "leave_float",
           "quantized_layers"]

SCOPES = ("weights", "layer")  # what leaving a layer float keeps float (module docstring)

_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOAT_KERNELS = ("Conv", "FusedConv", "NchwcConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the convs/gemms whose weight is a DequantizeLinear of a constant, in graph order."""
    constants = {init.name for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    layers = []
    for node in model.graph.node:
        dq = producers.get(node.input[1]) if node.op_type in _LAYER_OPS and len(node.input) > 1 else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in constants:
            layers.append(node.name)
    return layers


def float_weights_of(fp32: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Conv/gemm name -> its float weight in an FP32 file: the unrounded weights of ORT's PTQ of it.

    ORT's ``quantize_static`` keeps node names, so these key the PTQ file's layers too.
    """
    constants = {init.name: init for init in fp32.graph.initializer}
    return {node.name: numpy_helper.to_array(constants[node.input[1]]) for node in fp32.graph.node
            if node.op_type in _LAYER_OPS and len(node.input) > 1 and node.input[1] in constants}


def leave_float(model: onnx.ModelProto, layers: Sequence[str], float_weights: Mapping[str, np.ndarray],
                scope: str = "weights", activations: Sequence[str] = ()) -> onnx.ModelProto:
    """A copy of ``model`` in which each of ``layers`` computes in float with its unrounded weight.

    ``scope="layer"`` also feeds each layer the float tensor its input was quantized from (clipped to
    the quantized range, not rounded). Each of ``activations`` (:func:`~edgeqat.quant.unround.quantized_activations`)
    is left unrounded for all its readers (``unround``).

    Raises:
        QuantizationError: a layer is not a quantized conv/gemm of ``model``, or has no float weight
            of its weight's shape; an activation is not a quantized one; an unknown ``scope``.
    """
    if scope not in SCOPES:
        raise QuantizationError(f"float scope {scope!r}: use one of {', '.join(SCOPES)}")
    out = copy.deepcopy(model)
    graph = out.graph
    nodes = {node.name: node for node in graph.node}
    producers = {output: node for node in graph.node for output in node.output}
    quantized = set(quantized_layers(out))
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    for name in layers:
        if name not in quantized:
            raise QuantizationError(f"{name!r} is not a quantized conv/gemm of this file; "
                                    f"choose from {', '.join(sorted(quantized)) or 'none'}")
        weight = float_weights.get(name)
        dq = next(n for n in graph.node if nodes[name].input[1] in n.output)
        if weight is None or tuple(weight.shape) != shapes.get(dq.input[0]):
            raise QuantizationError(f"no float weight of shape {shapes.get(dq.input[0])} for {name!r}: export the "
                                    "INT8 file with export_onnx(..., float_weights=...) or pass the FP32 file's")
        initializer = numpy_helper.from_array(np.asarray(weight, np.float32), f"{name}_float_weight")
        graph.initializer.append(initializer)
        nodes[name].input[1] = initializer.name
        if scope == "layer":
            _read_unrounded(graph, nodes[name], producers)
    if activations:
        unround_activations(out, activations)
    apply_onnx_passes(out, ["keep_float_convs_float", "prune_unused"])
    return out


def _read_unrounded(graph: onnx.GraphProto, node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto]) -> None:
    """Feed ``node`` the float tensor its input is a QuantizeLinear -> DequantizeLinear of, clipped to
    that pair's range: the rounding goes, the clamp stays (``unround``). An input not so rounded is left as it is."""
    dq = producers.get(node.input[0])
    q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear":
        return
    name = f"{node.name}_unrounded_input"
    graph.node.insert(list(graph.node).index(node), clamp_node(graph, q.input[0], dq, name, f"{name}_clip"))
    node.input[0] = name


@dataclass
class LayerSensitivity:
    """One row: the file with only ``layer`` float (a conv/gemm, or with ``kind="activation"`` a tensor left
    unrounded: ``op`` is then the op that computes it)."""

    layer: str
    op: str
    accuracy: float
    recovered: float  # accuracy - the INT8 file's, in accuracy units (0.01 = 1 pt)
    latency_share: float | None  # the layer's share of the INT8 file's kernel time (ORT profiler)
    float_kernels: int  # float conv/gemm kernels in ORT's optimized graph of that file
    kind: str = "layer"  # layer | activation


@dataclass
class SensitivityReport:
    """Every quantized layer's row, most accuracy recovered first."""

    int8_accuracy: float
    n_images: int
    base_float_kernels: int  # float conv/gemm kernels ORT runs for the INT8 file itself
    layers: list[LayerSensitivity] = field(default_factory=list)
    fp32_accuracy: float | None = None
    scope: str = "weights"  # what each row left float (SCOPES)

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def layer_sensitivity(
    int8_path: str | Path,
    float_weights: Mapping[str, np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    fp32_accuracy: float | None = None,
    layers: Sequence[str] | None = None,
    profile_runs: int = 20,
    progress: Callable[[int, int], None] | None = None,
    scope: str = "weights",
    activations: Sequence[str] | None = (),
) -> SensitivityReport:
    """Accuracy on ``images`` with each layer alone left float, and each layer's latency share.

    Args:
        int8_path: the INT8 QDQ file (QAT export or ORT PTQ).
        float_weights: layer name -> unrounded weight (``export_onnx(..., float_weights=...)`` or
            :func:`float_weights_of` of the FP32 file).
        images, labels: a labelled split, normalized as in training (the validation split: the
            choice of layers must not be tuned on the test split).
        layers: which layers (default: every quantized one).
        profile_runs: batch-1 runs profiled for the latency shares (0: no shares).
        progress: called with (done, total) after each row.
        scope: what each row leaves float (:data:`SCOPES`).
        activations: tensors to give a row each, left unrounded (``kind="activation"``); None: every
            quantized activation (:func:`~edgeqat.quant.unround.quantized_activations`).

    Raises:
        QuantizationError: a layer row's file does not run one more float conv/gemm in ORT (``weights``:
            exactly one more).
    """
    from edgeqat.quant.verify import run_onnx

    model = onnx.load(str(int8_path))
    layers = list(layers) if layers is not None else quantized_layers(model)
    ops = {node.name: node.op_type for node in model.graph.node}
    labels = np.asarray(labels).ravel()
    base_accuracy = float((run_onnx(int8_path, images).argmax(1) == labels).mean())
    base_kernels = _float_kernels(int8_path)
    shares = _latency_shares(int8_path, images[:1], profile_runs) if profile_runs > 0 else {}
    report = SensitivityReport(base_accuracy, len(labels), base_kernels, fp32_accuracy=fp32_accuracy, scope=scope)
    activations = quantized_activations(model) if activations is None else list(activations)
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    rows = [("layer", layer) for layer in layers] + [("activation", tensor) for tensor in activations]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, name) in enumerate(rows):
            path = Path(tmp) / "variant.onnx"
            if kind == "layer":
                onnx.save(leave_float(model, [name], float_weights, scope), str(path))
            else:
                onnx.save(leave_float(model, [], float_weights, activations=[name]), str(path))
            kernels = _float_kernels(path)
            # ORT renames what it rewrites (NCHWc convs after their output), so kernels are counted, not named
            if kind == "layer" and (kernels < base_kernels + 1 or (scope == "weights" and kernels != base_kernels + 1)):
                raise QuantizationError(f"leaving {name!r} float gave {kernels - base_kernels} more float conv/gemm "
                                        f"kernels in ORT, not {'1' if scope == 'weights' else 'at least 1'}: the row "
                                        "would not measure that layer")
            accuracy = float((run_onnx(path, images).argmax(1) == labels).mean())
            if kind == "layer":
                op, share = ops.get(name, "?"), shares.get(name)
            else:  # the op that computes the tensor; its rounding's cost is not a kernel of its own
                op, share = producers.get(name, "input"), None
            report.layers.append(LayerSensitivity(name, op, accuracy, accuracy - base_accuracy, share, kernels, kind))
            if progress is not None:
                progress(i + 1, len(rows))
    report.layers.sort(key=lambda row: (-row.recovered, row.latency_share or 0.0))
    return report


def _float_kernels(path: str | Path) -> int:
    from edgeqat.quant.report import inspect_ort_graph

    counts = inspect_ort_graph(path).op_counts
    return sum(counts.get(op, 0) for op in _FLOAT_KERNELS)


_TOKEN = re.compile(r"_token_\d+$")


def _latency_shares(path: str | Path, example: np.ndarray, runs: int) -> dict[str, float]:
    """Node name (as in the file) -> share of the summed kernel time, first run left out.

    ORT's optimizer renames the nodes it rewrites to ``<name>_token_<n>``; the name is read back
    without that suffix, so a fused QLinearConv is charged to the Conv it came from.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(example, np.float32)}
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    seen: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = _TOKEN.sub("", event["name"].removesuffix("_kernel_time"))
        seen[node] += 1
        if seen[node] > 1:  # the first run pays one-off costs (allocations, packing)
            total[node] += event["dur"]
    overall = sum(total.values())
    return {node: t / overall for node, t in total.items()} if overall else {}
