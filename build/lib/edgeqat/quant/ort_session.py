"""One place that builds ONNX Runtime CPU sessions the way the measurements assume."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["cpu_session"]


def cpu_session(
    onnx_path: str | Path, threads: int = 1, optimized_model_path: str | Path | None = None
) -> ort.InferenceSession:
    """CPUExecutionProvider, ORT_ENABLE_ALL (the level that builds the NHWC int8 kernels).

    ``threads`` is the intra-op thread count; inter-op is 1 (sequential execution).
    """
    import onnxruntime as ort

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
