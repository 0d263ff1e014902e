"""Machine facts every benchmark records next to its numbers: results compare only on the same machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict[str, Any]:
    """CPU model, logical cores, torch threads and the versions that set the speed."""
    import torch

    facts: dict[str, Any] = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
                             "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                             "torch": torch.__version__}
    for name in ("onnxruntime", "lightning", "mlflow"):
        try:
            facts[name] = __import__(name).__version__
        except ImportError:
            pass
    return facts
