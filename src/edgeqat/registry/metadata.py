"""What a registered version says about itself: the preprocessing a device needs and the figures it was judged by.

Tags are strings (MLflow's model-version tags are); the deploy gate reads them back with
:func:`float_tag`. Every latency figure comes with the CPU and ISA it was measured on, because an INT8
speed-up measured on an AMX server says little about an AVX2 edge box.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeqat.data import ClassificationDataModule
    from edgeqat.quant.isa import CpuInfo

# metric key in the run -> version tag
METRIC_TAGS = {
    "test/acc_int8": "acc_int8",
    "test/acc_fp32": "acc_fp32",
    "int8/acc_drop": "acc_drop",
    "int8/latency_ms": "latency_ms",
    "int8/speedup": "speedup",
    "int8/size_mb": "size_mb",
    "int8/top1_agreement": "top1_agreement",
    "int8/max_step_drift": "max_step_drift",
}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def preprocessing_from_datamodule(dm: ClassificationDataModule, input_name: str) -> dict[str, Any]:
    """The input contract of the exported file, in the agent's ``Preprocessing`` format.

    It is what ``data.datamodule.to_tensor`` + normalisation do: HxWxC uint8 -> /255 -> channel
    conversion (mean of channels to 1, replicate 1 to 3) -> bilinear antialiased resize -> (x-mean)/std.
    """
    assert dm.normalization is not None, "call setup() first"
    return {
        "input_name": input_name,
        "layout": "NCHW",
        "dtype": "float32",
        "channels": int(dm.in_chans),
        "image_size": int(dm.image_size),
        "scale": 1 / 255,
        "mean": [float(v) for v in dm.normalization.mean],
        "std": [float(v) for v in dm.normalization.std],
        "resize": "bilinear_antialias",
        "class_names": [str(c) for c in dm.class_names],
    }


def version_tags(metrics: Mapping[str, float], *, cpu: CpuInfo, threads: int, sha256: str, run_id: str,
                 git_commit: str | None, quant: Mapping[str, Any], model: str, dataset: str,
                 target_isa: str) -> dict[str, str]:
    """Tags of a registered INT8 version: accuracy, latency with its CPU, size, provenance."""
    tags = {tag: f"{metrics[key]:.6g}" for key, tag in METRIC_TAGS.items() if key in metrics}
    tags.update({
        "latency_cpu": cpu.model,
        "latency_isa": cpu.isa.value,
        "latency_threads": str(threads),
        "sha256": sha256,
        "run_id": run_id,
        "git_commit": git_commit or "unknown",
        "quant_recipe": f"{quant['mode']} weight_range={quant['weight_range']}",
        "target_isa": target_isa,
        "model": model,
        "dataset": dataset,
    })
    return tags


def float_tag(tags: Mapping[str, str], key: str) -> float | None:
    """A numeric version tag, or None where it is absent or not a number."""
    try:
        return float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None
