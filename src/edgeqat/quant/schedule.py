"""QATSchedule: freeze observers and BN statistics at fixed epochs of the QAT fit."""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch
from typing_extensions import override

from edgeqat.quant.qat_model import QATModel, freeze_bn_stats, freeze_observers

__all__ = ["QATSchedule"]


class QATSchedule(L.Callback):
    """At the start of epoch ``freeze_observer_epoch`` (and later) fix the quantization scales; at
    ``freeze_bn_epoch`` stop BN running-stat updates. Epochs count from 0 at the start of the QAT
    fit. ``None`` never freezes.

    The last epochs then train against the qparams and BN fold that will be exported. Freezing is
    re-applied every epoch, so it also holds after resuming from a checkpoint.

    The QAT model is found as the first ``QATModel`` inside the LightningModule.
    """

    def __init__(self, freeze_observer_epoch: Optional[int] = None, freeze_bn_epoch: Optional[int] = None) -> None:
        super().__init__()
        for name, value in (("freeze_observer_epoch", freeze_observer_epoch), ("freeze_bn_epoch", freeze_bn_epoch)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an int >= 0 (a QAT epoch index), got {value!r}")
        self.freeze_observer_epoch = freeze_observer_epoch
        self.freeze_bn_epoch = freeze_bn_epoch
        self.ranks_in_step: bool | None = None  # under DDP, after the fit: see on_train_end

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self._due(self.freeze_observer_epoch, epoch) and not self._due(self.freeze_bn_epoch, epoch):
            return
        qat_model = self._find_qat_model(pl_module)
        if self._due(self.freeze_observer_epoch, epoch) and not qat_model.observers_frozen:
            freeze_observers(qat_model)
        if self._due(self.freeze_bn_epoch, epoch) and not qat_model.bn_frozen:
            freeze_bn_stats(qat_model)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Under DDP: whether every rank ends QAT with rank zero's quantization state.

        DDP broadcasts module buffers (observer ranges, scales, zero points, BN statistics) from
        rank zero at every forward, validation's included, so the ranks train with one state and end
        with it (measured: with or without the freezes), and the file rank zero exports is what every
        rank trained against. Checked, not assumed: each buffer's sum is gathered from every rank and
        compared; a strategy that does not broadcast buffers shows here.
        """
        if trainer.world_size < 2:
            return
        buffers = [b.detach().double().sum() for _, b in self._find_qat_model(pl_module).named_buffers()]
        gathered = trainer.strategy.all_gather(torch.stack(buffers))  # (ranks, buffers)
        self.ranks_in_step = bool(torch.equal(gathered, gathered[:1].expand_as(gathered)))

    @staticmethod
    def _due(freeze_epoch: Optional[int], epoch: int) -> bool:
        return freeze_epoch is not None and epoch >= freeze_epoch

    @staticmethod
    def _find_qat_model(pl_module: L.LightningModule) -> QATModel:
        for module in pl_module.modules():
            if isinstance(module, QATModel):
                return module
        raise RuntimeError(
            f"QATSchedule found no QATModel in {type(pl_module).__name__}; pass the model returned by "
            "edgeqat.quant.prepare_qat as the backbone, or drop QATSchedule for FP32 training."
        )
