"""The task function: build -> FP32 fit -> quantization recipe -> export -> verify -> metrics.

Entry points: ``edgeqat train [OVERRIDES...]`` and ``mlflow run . -P overrides="..."``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from edgeqat.data import ClassificationDataModule
from edgeqat.errors import EdgeqatError
from edgeqat.lightning_modules import ClassifierModule
from edgeqat.pipeline import JobContext, fit_and_test, make_trainer, run_recipe
from edgeqat.pipeline.recipes import Int8Model
from edgeqat.pipeline.resume import RESUMED_TAG, ResumePoint, find_resume_point
from edgeqat.pipeline.register import log_models
from edgeqat.pipeline.sensitivity import analyse_layers
from edgeqat.pipeline.verify import export_fp32, target_tags, verify
from edgeqat.quant.isa import detect_cpu
from edgeqat.quant.weight_format import resolve_weight_format
from edgeqat.tracking import RunContext, log_run_config, tracked_run
from edgeqat.tracking.system_metrics import system_metrics
from edgeqat.tracking.summary import NOTE_TAG, phase_tags, verdict_note

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one job produced: its run, final metrics, and the spool if the server was away at the end."""

    run_id: str
    metrics: dict[str, float]
    spool_path: Path | None = None
    model_version: str | None = None  # "<registered model>/<version>" when the INT8 model was registered


def build(cfg: DictConfig) -> tuple[ClassificationDataModule, ClassifierModule]:
    """Data first, so the backbone is built to the dataset's classes and channels; fails before any run."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: ClassificationDataModule = _instantiate(cfg.data)
    datamodule.setup()
    backbone = instantiate(cfg.model)(num_classes=datamodule.num_classes, in_chans=datamodule.in_chans)
    module = ClassifierModule(
        backbone=backbone,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.scheduler else None,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
    )
    if cfg.quant.init_checkpoint:
        load_fp32_weights(module, cfg.quant.init_checkpoint)
    return datamodule, module


def _instantiate(node: DictConfig) -> object:
    """Hydra ``instantiate``, but our own errors come out as themselves (one line), not wrapped in Hydra's."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, EdgeqatError):
            raise e.__cause__ from None
        raise


def load_fp32_weights(module: ClassifierModule, source: str) -> None:
    """Trained FP32 weights from a Lightning checkpoint file or an MLflow ``runs:/``/``models:/`` URI."""
    path = source
    if source.startswith(("runs:/", "models:/")):
        import mlflow

        path = mlflow.artifacts.download_artifacts(source)
    if not Path(path).is_file():
        raise EdgeqatError(f"quant.init_checkpoint={source!r} is not a file: pass a .ckpt path or a runs:/ URI")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch.load raises whatever pickle/zipfile/EOF raise on a damaged file
        raise EdgeqatError(f"quant.init_checkpoint={source!r} is not a readable checkpoint ({type(e).__name__}: "
                           f"truncated or not a .ckpt): pass the best.ckpt a run saved") from e
    if not isinstance(state, dict):
        raise EdgeqatError(f"quant.init_checkpoint={source!r} holds a {type(state).__name__}, not a checkpoint: "
                           "pass the best.ckpt a run saved")
    try:
        module.load_state_dict(state.get("state_dict", state))
    except RuntimeError as e:
        raise EdgeqatError(f"quant.init_checkpoint={source!r} does not fit this model/dataset: "
                           f"{str(e).splitlines()[0]}") from e


def train(cfg: DictConfig, overrides: Sequence[str] = ()) -> TrainResult:
    """Run one job as one MLflow run."""
    weights = resolve_weight_format(cfg.quant.weight_range, cfg.quant.target_isa)  # bad names fail before any run
    datamodule, module = build(cfg)
    tc = cfg.tracking
    with tracked_run(tc.tracking_uri, tc.experiment_name, cfg.output_dir, tc.run_name, dict(tc.tags),
                     tc.close_timeout_s, tc.batch_window_s, tc.parent_run_id, cfg.resume) as run, \
            system_metrics(run, tc.system_metrics, tc.system_metrics_interval_s):
        point = _resume_point(cfg, run) if cfg.resume else None
        log_run_config(run, OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_yaml(cfg, resolve=True),
                       overrides, dataset=datamodule.name)
        run.recorder.set_tags(target_tags(detect_cpu(), weights))
        ctx = JobContext(cfg, run, datamodule, module, weights)
        if point is not None and point.phase != "fp32":  # the FP32 fit finished in the first attempt
            load_fp32_weights(module, str(point.fp32_best))
            ctx.metrics.update(point.fp32_metrics)
            ctx.fp32_steps, ctx.qat_checkpoint = point.fp32_steps, point.checkpoint
        else:
            trainer, checkpoint = make_trainer(cfg, run, "fp32", ctx.fp32_epochs, total_epochs=ctx.total_epochs)
            resume_from = str(point.checkpoint) if point is not None and point.checkpoint else cfg.ckpt_path
            ctx.metrics.update(fit_and_test(trainer, checkpoint, module, datamodule, resume_from))
            ctx.fp32_steps = trainer.global_step
        run.recorder.set_tags(phase_tags("export"))
        fp32_onnx = export_fp32(ctx) if ctx.is_global_zero else None
        int8 = run_recipe(ctx, fp32_onnx)
        registered = _deliver(ctx, fp32_onnx, int8) if fp32_onnx is not None else None
    version = registered_version(run, registered)
    summary = {k: round(v, 4) for k, v in ctx.metrics.items() if k.startswith(("test/acc", "int8/"))}
    log.info("run %s: %s", run.run_id, summary)
    return TrainResult(run.run_id, ctx.metrics, run.spool_path, version)


def _resume_point(cfg: DictConfig, run: RunContext) -> ResumePoint:
    """Where ``resume=<run_id>`` continues; what the first attempt logged is not logged again."""
    point = find_resume_point(run.recorder.client, cfg.resume, run.output_dir, cfg.quant.mode)
    run.recorder.skip_logged(point.logged_through)
    run.recorder.set_tags({RESUMED_TAG: point.describe()})
    log.info("run %s resumes in %s", run.run_id, point.describe())
    return point


def _deliver(ctx: JobContext, fp32_onnx: Path, int8: Int8Model | None) -> str | None:
    """Rank zero's part after training: layer analysis, verification, models, the verdict."""
    if int8 is not None:
        int8 = analyse_layers(ctx, fp32_onnx, int8)  # quant.sensitivity / quant.fallback; else as is
    ctx.metrics.update(verify(ctx, fp32_onnx, int8))
    registered = log_models(ctx, fp32_onnx, int8)
    ctx.run.recorder.set_tags({NOTE_TAG: verdict_note(ctx.metrics)})
    return registered


def registered_version(run: RunContext, name: str | None) -> str | None:
    """``name/version`` of the version the run registered, once its recorder has sent everything."""
    if name is None or run.spool_path is not None or not run.recorder.enabled:
        return None
    from mlflow.tracking import MlflowClient

    from edgeqat.registry import find_run_version

    found = find_run_version(MlflowClient(run.tracking_uri), name, run.run_id)
    return f"{name}/{found.version}" if found else None
