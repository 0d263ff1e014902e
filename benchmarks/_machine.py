"""Machine facts every benchmark records next to its numbers: results compare only on the same machine."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine_facts() -> dict[str, Any]:
    """CPU model, its int8 ISA (what ORT's int8 kernels compute), cores, threads and library versions."""
    import torch

    from edgeqat.quant import detect_cpu

    cpu = detect_cpu()
    facts: dict[str, Any] = {"cpu": cpu.model, "isa": cpu.isa.value, "logical_cpus": os.cpu_count(),
                             "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                             "torch": torch.__version__}
    for name in ("onnxruntime", "lightning", "mlflow"):
        try:
            facts[name] = __import__(name).__version__
        except ImportError:
            pass
    return facts
