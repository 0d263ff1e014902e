"""Typed schema of the Hydra config tree (``conf/``).

Every group is checked against a dataclass at compose time, so a typo (``trainer.max_epoch=3``) or a
wrong type (``trainer.max_epochs=abc``) fails before any run is created.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from edgeqat.errors import EdgeqatError


@dataclass
class ModelConfig:
    """A backbone: any timm classifier or a torchvision adapter (see ``edgeqat models list``)."""

    _target_: str = "edgeqat.models.create_backbone"
    _partial_: bool = True  # num_classes / in_chans are filled in from the dataset
    name: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra constructor args (drop_rate, ...)


@dataclass
class DataConfig:
    """A dataset source from the registry (``edgeqat.data.list_sources()``) and how to split/feed it."""

    _target_: str = "edgeqat.data.ClassificationDataModule"
    source: str = MISSING
    root: Optional[str] = None  # imagefolder: a class-per-folder tree (local or s3://); fashion_mnist: its IDX files
    options: dict[str, Any] = field(default_factory=dict)  # source-specific (synthetic: num_samples, ...)
    image_size: int = 32
    in_chans: Optional[int] = None  # None: the dataset's own channel count; 1 <-> 3 converts
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    val_fraction: float = 0.1  # of all samples; of the train samples where the source has its own test split
    test_fraction: float = 0.2  # unused where the source has its own test split (fashion_mnist)
    max_train_samples: Optional[int] = None  # a stratified, seeded subset of the train split (CPU budgets)
    # training images max_train_samples left out, added to val (stratified, seeded): a larger split to choose
    # on (the fallback's set) at no training cost; train and test stay as they are (data/datamodule.py)
    extra_val_samples: int = 0
    augment: bool = False
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class OptimConfig:
    """Optimizer and LR scheduler as Hydra partials; the LightningModule binds them to its parameters."""

    optimizer: Any = MISSING
    scheduler: Any = None


@dataclass
class FallbackConfig:
    """Automatic float fallback (``pipeline/sensitivity.py``): off while ``max_drop`` is None.

    Layers are left float, most accuracy recovered first (from the sensitivity report, on the
    validation split), until INT8 is within ``max_drop`` of FP32 there or the budget is spent.
    """

    max_drop: Optional[float] = None  # accuracy units vs FP32 on the validation split (0.005 = 0.5 pt)
    max_latency_pct: Optional[float] = None  # extra batch-1 latency over the INT8 file, in %; None: no limit
    max_layers: Optional[int] = None  # most layers left float; None: no limit
    # a layer is kept only if it fixes more validation images than it breaks by this many standard
    # errors (paired, McNemar): greedy choice over dozens of layers otherwise keeps noise; 0: any gain
    min_z: float = 2.0
    # when no single candidate clears min_z (a loss spread over many roundings), try the best remaining ones
    # as sets (top 2, 4, 8, ...; quant/fallback.py), kept only if one meets max_drop beyond min_z within the budget
    grow: bool = True
    # the target must hold by this many standard errors of the paired drop vs FP32 on validation (1.64: a
    # one-sided 95 % bound), not only by its estimate: a set chosen to just meet 0.5 pt there lost up to 0.9 on test
    target_z: float = 0.0


@dataclass
class QuantConfig:
    """Quantization recipe (``edgeqat.pipeline.list_recipes()``): FP32 only, QAT to INT8, or ORT PTQ.

    The FP32 phase trains ``trainer.max_epochs`` epochs (the QAT warm-up) unless ``init_checkpoint``
    gives trained FP32 weights; QAT then fine-tunes ``qat_epochs`` more with ``qat_optimizer`` (a
    Hydra partial; None: the FP32 phase's optimizer) at ``qat_lr``.
    """

    mode: str = "fp32"  # fp32 | qat_int8 | ptq_int8
    qat_epochs: int = 2
    qat_lr: float = 1e-3
    qat_optimizer: Any = None
    qat_scheduler: Any = None  # Hydra partial taking ``optimizer``, stepped per QAT epoch; None: constant lr
    freeze_observer_epoch: Optional[int] = None  # QAT epoch (0-based) from which scales stay fixed
    freeze_bn_epoch: Optional[int] = None  # QAT epoch from which BN running statistics stay fixed
    distill_weight: float = 0.0  # share of the QAT loss matching the FP32 model's outputs (0: labels only)
    distill_temperature: float = 2.0
    init_checkpoint: Optional[str] = None  # FP32 weights to start from: a .ckpt path or a runs:/ URI
    float_modules: list[str] = field(default_factory=list)  # submodules kept float (fallback for odd ops)
    # True: an RGB stem conv without a max pool after it computes in float (MobileNetV3 in ORT: 0.86x -> 0.95x)
    float_stem: bool = False
    # Dense weights the target CPU's int8 kernels compute exactly (quant/weight_format.py): int8 [-127, 127],
    # int7 [-64, 64], u8 (int8 stored as uint8 + 128), auto = int7 where the target's kernels saturate (AVX2)
    weight_range: str = "auto"
    # the CPU the model is for (quant/isa.py: avx2, avx512_vnni, amx, ...; deploy:<target>: that target's); None: this one
    target_isa: Optional[str] = None
    # Deep convs on ORT's AMX int8 GEMM, same outputs (quant/gemm_routing.py); None: where the target has AMX
    ort_gemm_convs: Optional[bool] = None
    ptq_baseline: bool = False  # also quantize the FP32 model with ORT static PTQ (test/acc_ptq)
    # per-layer report: validation accuracy with each quantized layer alone left float + its latency share
    sensitivity: bool = False
    sensitivity_images: Optional[int] = 2000  # validation images it evaluates on (None: all)
    # also a row per quantized activation tensor left unrounded (quant/unround.py): where a depthwise net's PTQ
    # loss lives, and candidates for the fallback
    sensitivity_activations: bool = True
    # what "left float" keeps float in the report and the fallback (quant/sensitivity.py): weights (the
    # layer's weights unrounded, its input still uint8) or layer (its input activation unrounded too)
    float_scope: str = "weights"
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    calibration_batches: int = 8
    benchmark_resolutions: list[int] = field(default_factory=lambda: [224])
    latency_threads: int = 1
    latency_iters: int = 50


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer``; loggers and callbacks are attached in code."""

    _target_: str = "lightning.Trainer"
    max_epochs: int = 5
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: Any = "auto"  # ddp for multi-process / multi-node; only rank zero writes to MLflow
    num_nodes: int = 1
    precision: Any = "32-true"
    deterministic: bool = False
    log_every_n_steps: int = 10
    num_sanity_val_steps: int = 0
    check_val_every_n_epoch: int = 1
    gradient_clip_val: Optional[float] = None
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    limit_test_batches: Optional[float] = None
    fast_dev_run: Any = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = False


@dataclass
class TrackingConfig:
    """Where and how the run is tracked in MLflow."""

    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment_name: Optional[str] = None  # None: $MLFLOW_EXPERIMENT_NAME, else $MLFLOW_EXPERIMENT_ID, else edgeqat
    run_name: Optional[str] = None
    log_checkpoints: bool = True
    system_metrics: bool = False  # MLflow system metrics (CPU, memory) sampled during the run
    system_metrics_interval_s: float = 10.0
    status_interval_s: float = 5.0  # edgeqat.progress / eta_s tags at most this often
    max_imbalance: float = 3.0  # largest/smallest class ratio above which the run gets a data warning
    close_timeout_s: float = 60.0  # wait this long for an unreachable server at the end, then spool
    batch_window_s: float = 3.0  # metrics/tags wait this long to share one request with what follows
    # the full trainer state (last.ckpt) uploaded to the run at most this often, for `resume=<run_id>`
    # after a hard kill or a lost machine; None: never (the local copy only)
    checkpoint_interval_s: Optional[float] = 300.0
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: Optional[str] = None  # set by a sweep: this job's run is a child (mlflow.parentRunId) of it


@dataclass
class RegistryConfig:
    """What the run leaves in MLflow's model registry (``edgeqat.registry``)."""

    log_models: bool = True  # the INT8 and FP32 files as LoggedModels on the run
    register: bool = True  # register the INT8 model as a new version
    model_name: Optional[str] = None  # None: <model.name>-<data.source>-int8


@dataclass
class SweepConfig:
    """How a sweep's parent run picks its best child (``edgeqat train -m ...``, ``edgeqat/sweep``).

    ``best`` names a column of the parent's summary table (``edgeqat.sweep.summary.COLUMNS``);
    only children whose shipped model runs within ``max_latency_ms`` (batch 1, this CPU) compete.
    """

    best: str = "acc_int8"
    mode: str = "max"  # max | min
    max_latency_ms: Optional[float] = None  # None: no latency budget
    swept_keys: list[str] = field(default_factory=list)  # set by the sweep: the keys it varies (a child's run name)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 42
    output_dir: str = "outputs"
    ckpt_path: Optional[str] = None  # resume the FP32 fit from this checkpoint (e.g. a preempted.ckpt)
    resume: Optional[str] = None  # a run id: continue that run where it stopped (edgeqat train resume=<id>)


def register_configs() -> None:
    """Store the schema so ``config.yaml`` can extend it (``defaults: [base_config, ...]``)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


class ConfigError(EdgeqatError, ValueError):
    """The overrides do not compose into a valid config; the message names the fix."""


def config_dir() -> Path:
    return Path(__file__).resolve().parent / "conf"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra ``overrides``; typed, resolved and complete, or ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except Exception as e:  # Hydra/OmegaConf raise many types; all become one actionable line
        raise ConfigError(_explain(e)) from e
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"Missing required value(s): {', '.join(missing)}: pass e.g. {missing[0]}=<value>")
    check_ranges(cfg)
    return cfg


# key -> (lowest allowed, what it means): numbers the schema types but cannot bound. Checked at compose
# time, so `trainer.max_epochs=-1` (Lightning's "forever") is one line, not an OverflowError an hour in.
RANGES: dict[str, tuple[float, str]] = {
    "trainer.max_epochs": (0, "epochs of FP32 training (0 with quant.init_checkpoint)"),
    "trainer.num_nodes": (1, "machines"),
    "trainer.log_every_n_steps": (1, "steps between logged losses"),
    "quant.qat_epochs": (0, "QAT epochs"),
    "quant.qat_lr": (1e-12, "the QAT learning rate"),
    "quant.calibration_batches": (1, "PTQ calibration batches"),
    "quant.latency_threads": (1, "ORT threads for latency"),
    "quant.latency_iters": (1, "timed runs"),
    "quant.distill_weight": (0, "the distillation share of the loss"),
    "quant.distill_temperature": (1e-6, "the distillation temperature"),
    "data.image_size": (8, "pixels a side"),
    "data.batch_size": (1, "images per training batch"),
    "data.eval_batch_size": (1, "images per evaluation batch"),
    "data.num_workers": (0, "loader processes"),
    "data.max_train_samples": (1, "training images kept (null: all)"),
    "data.extra_val_samples": (0, "training images left out of training added to validation"),
    "quant.sensitivity_images": (1, "validation images the sensitivity report evaluates on"),
    "quant.fallback.max_drop": (0, "the largest accuracy drop vs FP32 the fallback accepts"),
    "quant.fallback.max_latency_pct": (0, "extra latency in % the fallback may spend"),
    "quant.fallback.max_layers": (1, "layers and activations the fallback may leave float"),
    "quant.fallback.min_z": (0, "standard errors a kept layer's gain must reach"),
    "quant.fallback.target_z": (0, "standard errors the fallback's target must hold by"),
    "tracking.status_interval_s": (0, "seconds between status tags (0: at every update)"),
    "tracking.close_timeout_s": (0, "seconds to wait for the server at the end"),
    "tracking.batch_window_s": (0, "seconds metrics wait to share a request"),
    "tracking.system_metrics_interval_s": (0.1, "seconds between system metric samples"),
    "sweep.max_latency_ms": (0, "the latency budget of the sweep's best child"),
    "tracking.checkpoint_interval_s": (0, "seconds between uploads of the resumable checkpoint"),
}


# key -> the values it takes: strings the schema cannot enumerate without importing what defines them.
CHOICES: dict[str, tuple[str, ...]] = {
    "quant.float_scope": ("weights", "layer"),  # edgeqat.quant.sensitivity.SCOPES
    "sweep.mode": ("max", "min"),
    # edgeqat.sweep.summary.COLUMNS that are numbers
    "sweep.best": ("accuracy", "acc_fp32", "acc_int8", "acc_ptq", "acc_drop", "agreement", "latency_ms", "speedup",
                   "size_mb"),
}


def check_ranges(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first value out of its range (:data:`RANGES`, :data:`CHOICES`)."""
    for key, (low, meaning) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value < low:
            shown = int(low) if float(low).is_integer() else low
            raise ConfigError(f"{key}={value} is out of range: {meaning}, at least {shown}")
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value}: use one of {', '.join(choices)}")
    if cfg.quant.distill_weight > 1:
        raise ConfigError(f"quant.distill_weight={cfg.quant.distill_weight}: a share of the loss, 0 to 1")
    small = [r for r in cfg.quant.benchmark_resolutions if r < 8]
    if small:
        raise ConfigError(f"quant.benchmark_resolutions has {small[0]}: resolutions are >= 8 pixels a side")


def _explain(e: Exception) -> str:
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        depth = 2 if e.missing_cfg_file.startswith("hydra/") else 1  # hydra/launcher/<name>
        parts = e.missing_cfg_file.split("/")
        group, name = "/".join(parts[:depth]), "/".join(parts[depth:])
        choices = ", ".join(sorted(e.options or [])) or "none"
        hint = f"; any timm model: model.name={name} (see: edgeqat models list)" if group == "model" else ""
        return f"Unknown {group} config {name!r}. Choose one of: {choices}{hint}"
    cause = e
    while cause.__cause__ is not None and not isinstance(cause, ValidationError):
        cause = cause.__cause__  # the OmegaConf error carries the key and the expected type
    if isinstance(cause, ConfigKeyError):
        return _unknown_key(cause.full_key)
    unknown = re.match(r"Could not override '([^']+)'", str(e))
    if unknown:  # Hydra's own wording suggests "+key=", which only hides a typo
        return _unknown_key(unknown.group(1))
    if isinstance(cause, ValidationError):
        msg = str(cause).splitlines()[0]
        return f"Bad value for {cause.full_key}: {msg}"
    return " ".join(str(e).split())[:400]


def _unknown_key(key: str) -> str:
    """One line for a key the schema does not have, with the closest one it has."""
    import difflib

    def keys(node: Any, prefix: str = "") -> list[str]:
        out = []
        for k, v in node.items():
            path = f"{prefix}{k}"
            out += keys(v, f"{path}.") if isinstance(v, dict) else [path]
        return out

    schema = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False, throw_on_missing=False)
    close = difflib.get_close_matches(key, keys(schema), n=1, cutoff=0.8)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown config key {key!r}: check the spelling (edgeqat train --cfg shows the config).{hint}"
