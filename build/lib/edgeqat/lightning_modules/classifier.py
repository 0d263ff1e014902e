"""``ClassifierModule``: trains any injected backbone; the same module runs the FP32 and QAT phases."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from edgeqat.lightning_modules.distillation import Distillation

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class ClassifierModule(L.LightningModule):
    """Cross-entropy classifier with top-1 and per-class accuracy for every stage.

    Args:
        backbone: a built network (FP32 ``nn.Module`` or a QAT-prepared graph).
        optimizer: partial taking ``params`` (``_partial_: true`` in ``conf/optim``).
        scheduler: optional partial taking ``optimizer``; stepped per epoch.
        num_classes: classifier width, for the metrics.
        class_names: names used for per-class metric keys.
        test_tag: suffix of the test metric (``test/acc_<tag>``): ``fp32`` or ``qat``.
        distillation: training loss also matches a teacher's outputs (QAT from the FP32 model).
    """

    def __init__(self, backbone: nn.Module, optimizer: OptimizerFactory, num_classes: int,
                 scheduler: SchedulerFactory | None = None, class_names: Sequence[str] | None = None,
                 test_tag: str = "fp32", distillation: Distillation | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Class names become metric keys: MLflow allows only [A-Za-z0-9_\-. /].
        self.class_names = [re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(c)) for c in
                            (class_names or [str(i) for i in range(num_classes)])]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for num_classes={num_classes}")
        self.test_tag = test_tag
        self.distillation = distillation
        # ModuleDict keys may not shadow nn.Module attributes (``train``), hence the ``_metrics`` suffix.
        self.metrics = nn.ModuleDict({
            f"{stage}_metrics": MetricCollection({
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "class_acc": MulticlassAccuracy(num_classes, average="none"),
            })
            for stage in ("train", "val", "test")
        })
        self.test_logits: list[torch.Tensor] = []

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        if stage == "train" and self.distillation is not None:
            loss = self.distillation.loss(x, logits, y)
        else:
            loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()}: lower the learning rate or check the inputs")
        self.metrics[f"{stage}_metrics"].update(logits.detach(), y)
        train = stage == "train"  # per-step train loss; val/test loss averaged over the epoch
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=not train, prog_bar=stage != "test")
        if stage == "test":
            self.test_logits.append(logits.detach().cpu())
        return loss

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self.metrics[f"{stage}_metrics"].compute()
        self.metrics[f"{stage}_metrics"].reset()
        key = f"test/acc_{self.test_tag}" if stage == "test" else f"{stage}/acc"
        self.log(key, values["acc"], prog_bar=True)
        if stage != "train":
            per_class = f"test/class_acc_{self.test_tag}" if stage == "test" else f"{stage}/class_acc"
            for name, acc in zip(self.class_names, values["class_acc"]):
                self.log(f"{per_class}/{name}", acc)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    @override
    def on_test_epoch_start(self) -> None:
        self.test_logits = []

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer),
                                                         "interval": "epoch"}}
