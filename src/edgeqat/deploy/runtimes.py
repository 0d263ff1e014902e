"""Runtimes a gate can test a model in: a registry, so OpenVINO or ExecuTorch slot in beside ONNX Runtime."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeqat.deploy.targets import TargetError


class GateRuntime(Protocol):
    """Loads one model file with the target's settings; predicts and times it."""

    version: str

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray: ...

    def latencies_ms(self, shape: tuple[int, ...], iters: int) -> np.ndarray: ...


class OnnxRuntime:
    """ONNX Runtime on the CPU, ``threads`` intra-op threads, one inter-op thread (as on a device)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        out = [self.session.run(None, {self.input_name: images[i:i + batch_size]})[0]
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out)

    def latencies_ms(self, shape: tuple[int, ...], iters: int) -> np.ndarray:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(3):  # warm-up: first runs allocate and pick kernels
            self.session.run(None, {self.input_name: x})
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            self.session.run(None, {self.input_name: x})
            times.append((time.perf_counter() - t0) * 1e3)
        return np.asarray(times)


RUNTIMES: dict[str, Callable[[Path, int], GateRuntime]] = {"onnxruntime": OnnxRuntime}


def load_runtime(name: str, path: Path, threads: int) -> GateRuntime:
    try:
        factory = RUNTIMES[name]
    except KeyError:
        raise TargetError(f"gate.runtime={name!r}: choose one of {', '.join(RUNTIMES)}") from None
    return factory(path, threads)
