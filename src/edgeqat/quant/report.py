"""Step VERIFY (graph side): which kernels ORT really runs, and why the float ones stay float.

Reads the graph ORT produces after ORT_ENABLE_ALL optimization (``optimized_model_filepath``), so
the counts are what executes (QLinearConv, QGemm, ...), not what the exporter wrote.
"""

from __future__ import annotations

import collections
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.gemm_routing import weight_zero_point_is_zero
from edgeqat.quant.ort_session import cpu_session
from edgeqat.quant.steps import QuantStep

if TYPE_CHECKING:
    import onnx

__all__ = ["FloatNode", "GraphReport", "assert_integer_kernels", "inspect_ort_graph"]

# Ops that compute in integer arithmetic on ORT's CPU EP.
INTEGER_OPS = frozenset({
    "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSoftmax", "QLinearWhere",
    "QLinearReduceMean", "QAttention",
})
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
_INT_OUTPUT_OPS = INTEGER_OPS | {"QuantizeLinear", "DynamicQuantizeLinear"}
_INT_SIDE_OPS = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin"})  # outputs are index tensors

# Why ORT leaves an op float when it has no choice (reason per op type).
_NO_INTEGER_KERNEL = {
    "HardSwish": "ORT has no int8 HardSwish kernel; it runs in float between DequantizeLinear and QuantizeLinear",
    "HardSigmoid": "ORT has no int8 HardSigmoid kernel; it runs in float between DequantizeLinear and QuantizeLinear",
    "Gelu": "ORT has no int8 Gelu kernel",
    "BiasGelu": "ORT has no int8 Gelu kernel",
    "Tanh": "ORT has no int8 Tanh kernel",
    "Erf": "ORT has no int8 Erf kernel",
    "Elu": "ORT has no int8 Elu kernel",
    "Mish": "ORT has no int8 Mish kernel",
    "Softplus": "ORT has no int8 Softplus kernel",
    "ReduceMean": "ORT has no int8 ReduceMean; only a 4-D mean over (H, W) becomes QLinearGlobalAveragePool",
    "BatchNormalization": "BatchNormalization not folded: no convolution directly in front of it",
    "Sub": "ORT has no int8 Sub kernel",
    "Div": "ORT has no int8 Div kernel",
    "Pow": "ORT has no int8 Pow kernel",
    "Sqrt": "ORT has no int8 Sqrt kernel",
    "Resize": "float Resize: its input is not quantized",
    "ReorderInput": "layout conversion (NCHWc) ORT inserts in front of a float convolution",
    "ReorderOutput": "layout conversion (NCHWc) ORT inserts after a float convolution",
    "Transpose": "layout transpose ORT inserts around a float op (NHWC int8 kernels vs NCHW float ops)",
}


@dataclass(frozen=True)
class FloatNode:
    """One node of the ORT-optimized graph that computes in float."""

    name: str
    op_type: str
    reason: str


@dataclass
class GraphReport:
    """Kernel census of the ORT-optimized graph (the ``int8/report.json`` artifact)."""

    op_counts: dict[str, int]
    float_nodes: list[FloatNode] = field(default_factory=list)
    # QLinearConv by the MLAS kernel its weight zero point selects: "symmetric_conv" or "gemm" (gemm_routing)
    conv_kernels: dict[str, int] = field(default_factory=dict)

    @property
    def integer_op_count(self) -> int:
        """How many nodes run integer kernels (QLinearConv, QGemm, QLinearAdd, ...)."""
        return sum(n for op, n in self.op_counts.items() if op in INTEGER_OPS)

    def count(self, op_type: str) -> int:
        return self.op_counts.get(op_type, 0)

    def to_dict(self) -> dict:
        """JSON-serialisable form; ``float_ops`` summarizes float nodes by op type."""
        return {
            "op_counts": dict(sorted(self.op_counts.items())),
            "integer_op_count": self.integer_op_count,
            "qlinearconv_kernels": dict(sorted(self.conv_kernels.items())),
            "float_ops": dict(collections.Counter(n.op_type for n in self.float_nodes)),
            "float_nodes": [asdict(n) for n in self.float_nodes],
        }

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def inspect_ort_graph(onnx_path: str | Path) -> GraphReport:
    """Optimize ``onnx_path`` with ORT (ORT_ENABLE_ALL, 1 thread) and report its kernels.

    Raises:
        QuantizationError: ORT cannot load the model.
    """
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        try:
            cpu_session(onnx_path, threads=1, optimized_model_path=optimized)
        except Exception as exc:
            raise QuantizationError(
                f"[{QuantStep.VERIFY.value}] ONNX Runtime cannot load {onnx_path}: {exc}"
            ) from exc
        model = onnx.load(str(optimized))
    nodes = list(model.graph.node)
    op_counts = dict(collections.Counter(n.op_type for n in nodes))
    return GraphReport(op_counts=op_counts, float_nodes=_float_nodes(model), conv_kernels=_conv_kernels(model))


def assert_integer_kernels(report: GraphReport, what: str = "the INT8 model") -> None:
    """Refuse a 'quantized' artifact that ORT executes without a single integer kernel."""
    if report.integer_op_count == 0:
        top = dict(collections.Counter(report.op_counts).most_common(6))
        raise QuantizationError(
            f"[{QuantStep.VERIFY.value}] {what} runs no integer kernel in ONNX Runtime (ops: {top}); it is a "
            "float model and must not be published as INT8. Check that prepare_qat quantized the backbone "
            "(no float_modules covering everything) and that export kept the QuantizeLinear/DequantizeLinear pairs."
        )


def _float_nodes(model: onnx.ModelProto) -> list[FloatNode]:
    """Nodes whose data input and output are float, with a reason for each."""
    graph = model.graph
    is_float = _infer_float_values(graph)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    initializers = {i.name for i in graph.initializer}
    context = _Context(producers, consumers, {i.name for i in graph.input},
                       {name for name in initializers if is_float.get(name)})
    result = []
    for node in graph.node:
        if node.op_type in _QDQ_OPS or node.op_type in INTEGER_OPS or node.op_type == "Constant":
            continue
        data_inputs = [i for i in node.input if i and i not in initializers]
        if not any(is_float.get(i) for i in data_inputs) or not any(is_float.get(o) for o in node.output):
            continue
        name = node.name or f"<unnamed, output {node.output[0]}>"
        result.append(FloatNode(name, node.op_type, _reason(node, data_inputs, context)))
    return result


def _conv_kernels(model: onnx.ModelProto) -> dict[str, int]:
    """Count QLinearConv nodes by the kernel ORT picks from their weight zero point."""
    from onnx import numpy_helper

    convs = [node for node in model.graph.node if node.op_type == "QLinearConv"]
    wanted = {node.input[5] for node in convs if len(node.input) > 5}
    zero_points = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer if init.name in wanted}
    kernels: collections.Counter[str] = collections.Counter()
    for node in convs:
        zero_point = zero_points.get(node.input[5]) if len(node.input) > 5 else None
        kernels["symmetric_conv" if weight_zero_point_is_zero(zero_point) else "gemm"] += 1
    return dict(kernels)


def _infer_float_values(graph: onnx.GraphProto) -> dict[str, bool]:
    """Value name -> True if it holds float data (propagated in topological order)."""
    from onnx import TensorProto

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    is_float: dict[str, bool] = {}
    for vi in graph.input:
        is_float[vi.name] = vi.type.tensor_type.elem_type in floats
    for init in graph.initializer:
        is_float[init.name] = init.data_type in floats
    for node in graph.node:
        if node.op_type in _INT_OUTPUT_OPS or node.op_type in _INT_SIDE_OPS:
            out = False
        elif node.op_type == "DequantizeLinear":
            out = True
        elif node.op_type == "Cast":
            out = next((a.i for a in node.attribute if a.name == "to"), 0) in floats
        elif node.op_type == "Constant":
            out = any(a.t.data_type in floats for a in node.attribute if a.name == "value")
        else:  # elementwise and data movement: the dtype of the first input
            out = bool(node.input) and is_float.get(node.input[0], False)
        for name in node.output:
            is_float[name] = out
    return is_float


@dataclass(frozen=True)
class _Context:
    producers: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    graph_inputs: set[str]
    float_initializers: set[str]


def _reason(node: onnx.NodeProto, data_inputs: list[str], ctx: _Context) -> str:
    op = node.op_type
    if op in _NO_INTEGER_KERNEL:
        return _NO_INTEGER_KERNEL[op]
    if op in ("Conv", "FusedConv") and ctx.graph_inputs & set(data_inputs):
        return (
            "RGB stem conv kept float on purpose: ORT's FP32 stem kernel beats its u8s8 kernel for <= 4 input "
            "channels; its output is quantized"
        )
    if op in ("Conv", "FusedConv", "Gemm") and len(node.input) > 1 and node.input[1] in ctx.float_initializers:
        return (
            "float weights: left float by the quantizer (a module in quant.float_modules, or a pattern it "
            "does not annotate)"
        )
    users = [c for o in node.output for c in ctx.consumers.get(o, [])]
    feeds_q = bool(users) and all(c.op_type == "QuantizeLinear" for c in users)
    if op == "Clip":
        if not feeds_q:
            return "Clip not fused: not followed by a QuantizeLinear whose range it covers"
        return "Clip not fused: its range differs from the following QuantizeLinear's range"
    if op == "Relu":
        return "Relu not fused: not directly followed by a QuantizeLinear with zero point at the range minimum"
    sources = [ctx.producers[i].op_type for i in data_inputs if i in ctx.producers]
    float_sources = sorted({s for s in sources if s != "DequantizeLinear"})
    if float_sources:
        return f"input not quantized: fed by float {float_sources}"
    if len(sources) < len(data_inputs):
        return "input not quantized: reads the float graph input"
    if not feeds_q:
        return "output not quantized: not followed by QuantizeLinear (e.g. the model output or a float consumer)"
    return f"ORT has no int8 {op} kernel for this pattern; runs in float between DequantizeLinear and QuantizeLinear"
