"""Quantization recipes (``quant.mode``): from the trained FP32 module to the INT8 ONNX model.

A recipe is registered with ``@register_recipe(name)``; it gets the job and the FP32 ONNX file and
returns the INT8 model it made (or None for ``fp32``). Verification is the same for every recipe.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from edgeqat.data import ClassificationDataModule
from edgeqat.errors import EdgeqatError
from edgeqat.lightning_modules import ClassifierModule, Distillation
from edgeqat.pipeline.trainer import fit_and_test, make_trainer
from edgeqat.quant.weight_format import WeightFormat
from edgeqat.tracking import RunContext
from edgeqat.tracking.summary import phase_tags

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """Everything a recipe needs: config, run, data, the trained FP32 module and the target's weight format."""

    cfg: DictConfig
    run: RunContext
    datamodule: ClassificationDataModule
    module: ClassifierModule
    weights: WeightFormat
    metrics: dict[str, float] = field(default_factory=dict)
    fp32_steps: int = 0  # optimizer steps the FP32 phase took: where QAT's steps continue on the run's axis
    qat_checkpoint: Path | None = None  # a resumed job killed during QAT: the full state QAT continues from

    @property
    def ort_gemm_convs(self) -> bool:
        """``quant.ort_gemm_convs`` resolved for the target ISA (auto: on where it is AMX)."""
        from edgeqat.quant import resolve_ort_gemm_convs

        return resolve_ort_gemm_convs(self.cfg.quant.ort_gemm_convs, self.weights.target_isa)

    @property
    def fp32_epochs(self) -> int:
        """FP32 epochs this job trains: none when it starts from trained weights."""
        return 0 if self.cfg.quant.init_checkpoint else self.cfg.trainer.max_epochs

    @property
    def total_epochs(self) -> int:
        qat = self.cfg.quant.qat_epochs if self.cfg.quant.mode == "qat_int8" else 0
        return self.fp32_epochs + qat

    @property
    def is_global_zero(self) -> bool:
        """Whether this process writes the job's files and run (the only one, or DDP's rank zero).

        Under DDP every rank runs the job; the others' share is the training (gradients, and the
        observer and BN buffers DDP broadcasts from rank zero at every forward), not the exports.
        """
        from lightning.pytorch.utilities import rank_zero_only

        return getattr(rank_zero_only, "rank", 0) == 0

    @property
    def models_dir(self) -> Path:
        return self.run.output_dir / "models"

    def example_input(self, batch: int = 2) -> torch.Tensor:
        size = self.datamodule.image_size
        return torch.zeros(batch, self.datamodule.in_chans, size, size)


@dataclass(frozen=True)
class Int8Model:
    """An INT8 ONNX file and, when the recipe has a torch model, its logits on the test split.

    ``reference_logits``: what the file's integer operators compute exactly (the converted graph,
    ``integer_reference``); ``fake_quant_logits``: the float fake-quant model QAT trained;
    ``float_weights``: each quantized layer's unrounded weight, by node name, where a sensitivity
    report or a fallback needs them (None: read them from the FP32 file, as for ORT's PTQ).
    """

    path: Path
    reference_logits: np.ndarray | None = None
    fake_quant_logits: np.ndarray | None = None
    float_weights: dict[str, np.ndarray] | None = None


# (context, the FP32 ONNX file: None on DDP ranks other than zero, which only train) -> the INT8 model
# under DDP: whether every rank ended QAT with rank zero's scales, zero points and BN statistics
DDP_STATE_TAG = "edgeqat.ddp_quant_state"

Recipe = Callable[[JobContext, Path | None], Int8Model | None]
_RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str) -> Callable[[Recipe], Recipe]:
    def wrap(fn: Recipe) -> Recipe:
        if name in _RECIPES:
            log.warning("quantization recipe %r registered twice; keeping the last one", name)
        _RECIPES[name] = fn
        return fn

    return wrap


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def run_recipe(ctx: JobContext, fp32_onnx: Path | None) -> Int8Model | None:
    mode = ctx.cfg.quant.mode
    if mode not in _RECIPES:
        raise EdgeqatError(f"Unknown quant.mode {mode!r}: choose one of {', '.join(list_recipes())} (quant=<name>)")
    return _RECIPES[mode](ctx, fp32_onnx)


@register_recipe("fp32")
def fp32_only(ctx: JobContext, fp32_onnx: Path | None) -> None:
    """No quantization: the FP32 ONNX model is the deliverable."""
    return None


@register_recipe("qat_int8")
def qat_int8(ctx: JobContext, fp32_onnx: Path | None) -> Int8Model | None:
    """Fake-quant fine-tuning of the FP32 weights, then convert and export the INT8 graph."""
    from edgeqat.pipeline.sensitivity import qat_float_weights, wants_float_weights
    from edgeqat.quant import QATSchedule, convert, export_onnx, integer_reference_logits, prepare_qat

    q = ctx.cfg.quant
    teacher = copy.deepcopy(ctx.module.backbone).eval() if q.distill_weight > 0 else None
    prepared = prepare_qat(ctx.module.backbone.eval(), ctx.example_input(), float_modules=list(q.float_modules),
                           float_stem=q.float_stem, dense_weight_qmax=ctx.weights.dense_qmax)
    qat_module = ClassifierModule(
        backbone=prepared,
        optimizer=functools.partial(instantiate(q.qat_optimizer) if q.qat_optimizer else ctx.module.optimizer_factory,
                                    lr=q.qat_lr),
        scheduler=instantiate(q.qat_scheduler) if q.qat_scheduler else None,
        num_classes=ctx.datamodule.num_classes,
        class_names=ctx.datamodule.class_names,
        test_tag="qat",
        distillation=Distillation(teacher, q.distill_weight, q.distill_temperature) if teacher is not None else None,
    )
    schedule = QATSchedule(q.freeze_observer_epoch, q.freeze_bn_epoch)
    trainer, checkpoint = make_trainer(
        ctx.cfg, ctx.run, "qat", q.qat_epochs, epoch_offset=ctx.fp32_epochs, total_epochs=ctx.total_epochs,
        extra_callbacks=[schedule], step_offset=ctx.fp32_steps,
    )
    ctx.metrics.update(fit_and_test(trainer, checkpoint, qat_module, ctx.datamodule,
                                    str(ctx.qat_checkpoint) if ctx.qat_checkpoint else None))
    if not ctx.is_global_zero:
        return None  # rank zero converts and exports; the same file written twice would race
    if schedule.ranks_in_step is not None:
        ctx.run.recorder.set_tags({DDP_STATE_TAG: f"in step on {trainer.world_size} ranks" if schedule.ranks_in_step
                                   else "differs across ranks: the strategy does not broadcast buffers from rank "
                                        "zero (use trainer.strategy=ddp, whose broadcast_buffers is on)"})
    ctx.run.recorder.set_tags(phase_tags("export"))
    converted = convert(prepared)
    path = export_onnx(converted, ctx.example_input(), ctx.models_dir / "int8" / "model.onnx",
                       ort_gemm_convs=ctx.ort_gemm_convs, weights=ctx.weights)
    images = ctx.datamodule.split_arrays("test")[0]
    float_weights = None
    if wants_float_weights(q):
        float_weights = qat_float_weights(prepared, ctx.example_input(), ctx.weights)
    return Int8Model(path, integer_reference_logits(converted, images), _torch_logits(prepared, images), float_weights)


@register_recipe("ptq_int8")
def ptq_int8(ctx: JobContext, fp32_onnx: Path | None) -> Int8Model | None:
    """ONNX Runtime static quantization of the FP32 model, calibrated on training batches."""
    if fp32_onnx is None:
        return None  # a DDP rank other than zero: nothing to train here
    return Int8Model(post_training_quantize(ctx, fp32_onnx, ctx.models_dir / "int8" / "model.onnx"))


def post_training_quantize(ctx: JobContext, fp32_onnx: Path, out: Path) -> Path:
    from edgeqat.quant import ptq_onnx

    batch = ctx.datamodule.batch_size
    images, _ = ctx.datamodule.split_arrays("train", limit=batch * ctx.cfg.quant.calibration_batches)
    return ptq_onnx(fp32_onnx, (images[i:i + batch] for i in range(0, len(images), batch)), out,
                    ort_gemm_convs=ctx.ort_gemm_convs, weights=ctx.weights)


@torch.no_grad()
def _torch_logits(model: torch.nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model(torch.from_numpy(images[i:i + batch])) for i in range(0, len(images), batch)]).numpy()
