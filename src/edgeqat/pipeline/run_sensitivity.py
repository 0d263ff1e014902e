"""``edgeqat sensitivity RUN_ID``: the per-layer report of a finished run, logged into that run.

The run's own artifacts say everything: its resolved config (``config/config.yaml``), its FP32 and
INT8 files, and, for QAT, the checkpoint the INT8 file was exported from (``trainer.test`` loads the
best one before export). A row needs each layer's weights *before rounding*:

* ORT PTQ (``quant.mode=ptq_int8``): the FP32 file's (:func:`~edgeqat.quant.sensitivity.float_weights_of`);
* QAT: the fake-quant model is rebuilt from the checkpoint (same backbone, same ``prepare_qat``
  arguments, the run's recorded weight format), checked to export a file whose outputs equal the
  run's INT8 file's exactly (on 64 validation images),
  then exported once more with its weights unfolded (``qat_float_weights``). A rebuild that does
  not reproduce the file is refused: its weights would describe another model.

A run whose INT8 model came out of a fallback is analysed on the file before the fallback
(``int8_before_fallback/``), the one every layer of which is quantized.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from edgeqat.errors import EdgeqatError

__all__ = ["RunArtifacts", "sensitivity_of_run"]


@dataclass
class RunArtifacts:
    """What the report needs from a finished run, downloaded."""

    run_id: str
    cfg: DictConfig
    tags: dict[str, str]
    int8: Path
    fp32: Path
    analysed: str  # the artifact path of the INT8 file analysed


def sensitivity_of_run(client, run_id: str, scope: str | None = None, images: int | None = None):
    """Report for ``run_id`` (``scope``/``images``: the run's ``quant.float_scope``/``sensitivity_images``
    unless given), logged into the run. Returns the :class:`~edgeqat.quant.sensitivity.SensitivityReport`.

    Raises:
        EdgeqatError: no such run, an FP32-only run, a missing artifact, or a QAT checkpoint that does
            not reproduce the run's INT8 file.
    """
    import onnx

    from edgeqat.pipeline.sensitivity import log_report
    from edgeqat.quant.sensitivity import SCOPES, float_weights_of, layer_sensitivity
    from edgeqat.quant.verify import run_onnx
    from edgeqat.tracking.recorder import RunRecorder

    if scope is not None and scope not in SCOPES:
        raise EdgeqatError(f"--scope {scope}: use one of {', '.join(SCOPES)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = _download(client, run_id, work)
        q = run.cfg.quant
        datamodule = _datamodule(run.cfg)
        # runs logged before these settings existed get their defaults
        val_images, labels = datamodule.split_arrays("val", limit=images or q.get("sensitivity_images", 2000))
        if q.mode == "ptq_int8":
            float_weights = float_weights_of(onnx.load(str(run.fp32)))
        else:
            float_weights = _qat_float_weights(client, run, datamodule, val_images[:64], work)
        fp32_accuracy = float((run_onnx(run.fp32, val_images).argmax(1) == labels).mean())
        report = layer_sensitivity(run.int8, float_weights, val_images, labels, fp32_accuracy=fp32_accuracy,
                                   scope=scope or q.get("float_scope", "weights"),
                                   activations=None if q.get("sensitivity_activations", True) else ())
        recorder = RunRecorder(client, run_id, work / "staging", work / "spool")
        try:
            log_report(recorder, report)
            recorder.set_tags({"edgeqat.sensitivity_of": run.analysed})
        finally:
            if recorder.close() is not None:
                raise EdgeqatError(f"the tracking server went away while logging the report into run {run_id}; "
                                   "run the command again")
    return report


def _download(client, run_id: str, work: Path) -> RunArtifacts:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise EdgeqatError(f"no run {run_id!r} on {client.tracking_uri}: pass the run id the job printed "
                           "(or the MLflow UI shows)") from e

    def fetch(path: str) -> Path:
        return _fetch(client, run_id, path, work)

    cfg = OmegaConf.create(fetch("config/config.yaml").read_text())
    if cfg.quant.mode not in ("qat_int8", "ptq_int8"):
        raise EdgeqatError(f"run {run_id} is quant.mode={cfg.quant.mode}: it has no INT8 model to analyse "
                           "(train with quant=qat_int8 or quant=ptq_int8)")
    names = {a.path for a in client.list_artifacts(run_id, "int8_before_fallback")}
    analysed = "int8_before_fallback/model.onnx" if "int8_before_fallback/model.onnx" in names else "int8/model.onnx"
    return RunArtifacts(run_id, cfg, dict(run.data.tags), fetch(analysed), fetch("fp32/model.onnx"), analysed)


def _fetch(client, run_id: str, path: str, work: Path) -> Path:
    from mlflow.exceptions import MlflowException

    dst = work / "artifacts" / Path(path).parent  # MLflow writes <dst>/<file name>: one folder per artifact folder
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError) as e:
        raise EdgeqatError(f"run {run_id} has no artifact {path!r}: {str(e).splitlines()[0]}") from e


def _datamodule(cfg: DictConfig):
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.setup()
    return datamodule


def _qat_float_weights(client, run: RunArtifacts, datamodule, check_images: np.ndarray,
                       work: Path) -> dict[str, np.ndarray]:
    """The QAT model rebuilt from its checkpoint; refused unless it exports the run's INT8 file exactly."""
    import torch
    from hydra.utils import instantiate

    from edgeqat.pipeline.sensitivity import qat_float_weights
    from edgeqat.quant import convert, export_onnx, prepare_qat, resolve_ort_gemm_convs
    from edgeqat.quant.verify import run_onnx
    from edgeqat.quant.weight_format import resolve_weight_format

    q = run.cfg.quant
    meta = json.loads(_fetch(client, run.run_id, "checkpoints/qat/metadata.json", work).read_text())
    checkpoint = _fetch(client, run.run_id, f"checkpoints/qat/{meta['files'][0]}", work)
    # the weight format the run exported for, as recorded: on another CPU "auto" would resolve differently
    weights = resolve_weight_format(run.tags.get("edgeqat.weight_range", q.weight_range),
                                    run.tags.get("edgeqat.target_isa", q.target_isa))
    backbone = instantiate(run.cfg.model)(num_classes=datamodule.num_classes, in_chans=datamodule.in_chans)
    example = torch.zeros(2, datamodule.in_chans, datamodule.image_size, datamodule.image_size)
    prepared = prepare_qat(backbone.eval(), example, float_modules=list(q.float_modules), float_stem=q.float_stem,
                           dense_weight_qmax=weights.dense_qmax)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    prepared.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
    prepared.eval()
    again = export_onnx(convert(prepared), example, work / "rebuilt" / "model.onnx",
                        ort_gemm_convs=resolve_ort_gemm_convs(q.ort_gemm_convs, weights.target_isa), weights=weights)
    if not np.array_equal(run_onnx(again, check_images), run_onnx(run.int8, check_images)):
        raise EdgeqatError(f"run {run.run_id}: the QAT checkpoint {meta['files'][0]} does not export the run's INT8 "
                           f"file again ({run.analysed}); its weights would describe another model")
    return qat_float_weights(prepared, example, weights)
