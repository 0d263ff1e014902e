"""After verification: the run's ONNX files as LoggedModels, the INT8 one registered with its figures.

Everything goes through the run's recorder as ``logged_model`` operations, after the metrics they
quote, so a tracking-server outage delays the registration (or spools it for ``edgeqat sync``) and
loses nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeqat.quant.isa import detect_cpu
from edgeqat.registry import LoggedModelSpec, preprocessing_from_datamodule, sha256_file, version_tags
from edgeqat.tracking.run import git_commit

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from edgeqat.pipeline.recipes import Int8Model, JobContext


def registered_model_name(cfg: DictConfig) -> str:
    """``registry.model_name``, by default ``<model>-<data>-int8`` (one registered model per pairing)."""
    return cfg.registry.model_name or f"{cfg.model.name}-{cfg.data.source}-int8"


def log_models(ctx: JobContext, fp32_onnx: Path, int8: Int8Model | None) -> str | None:
    """Queue the FP32 and INT8 LoggedModels; returns the registered model's name when INT8 is registered."""
    cfg = ctx.cfg
    if not cfg.registry.log_models:
        return None
    example = _input_example(ctx, fp32_onnx.parent / "input_example.npy")
    cpu = detect_cpu()
    preprocessing = preprocessing_from_datamodule(ctx.datamodule, input_name=_input_name(fp32_onnx))
    common: dict[str, Any] = {"preprocessing": preprocessing, "cpu": cpu.model, "isa": cpu.isa.value}
    params = {"model": cfg.model.name, "dataset": cfg.data.source, "image_size": str(cfg.data.image_size),
              "quant_mode": cfg.quant.mode}
    ctx.run.recorder.log_model(LoggedModelSpec(
        name="fp32", path=str(fp32_onnx), example=str(example), model_type="onnx-fp32", params=params,
        metadata={"edgeqat": {**common, "format": "fp32"}},
        tags={"edgeqat.sha256": sha256_file(fp32_onnx)}))
    if int8 is None:
        return None
    sha = sha256_file(int8.path)
    name = registered_model_name(cfg) if cfg.registry.register else None
    tags = version_tags(ctx.metrics, cpu=cpu, threads=cfg.quant.latency_threads, sha256=sha,
                        run_id=ctx.run.run_id, git_commit=git_commit(), quant=cfg.quant, model=cfg.model.name,
                        dataset=cfg.data.source, target_isa=ctx.weights.target_isa.value)
    ctx.run.recorder.log_model(LoggedModelSpec(
        name="int8", path=str(int8.path), example=str(example), model_type="onnx-int8",
        params={**params, "weight_range": ctx.weights.range.value},
        metadata={"edgeqat": {**common, "format": "int8", "weight_range": ctx.weights.range.value,
                              "target_isa": ctx.weights.target_isa.value}},
        tags={"edgeqat.sha256": sha}, register_as=name, version_tags=tags))
    return name


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def _input_example(ctx: JobContext, path: Path) -> Path:
    """One preprocessed test image, as the model sees it (MLflow's input example)."""
    images, _ = ctx.datamodule.split_arrays("test", limit=1)
    np.save(path, images.astype(np.float32))
    return path
