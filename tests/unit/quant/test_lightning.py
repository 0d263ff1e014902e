"""TRAIN: a prepared model as the backbone of a LightningModule, fit, validate, checkpoint, reload."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeqat.quant import QATModel, QATSchedule, prepare_qat
from tests.unit.quant.tiny import TinyMobile, synthetic_batch, train

RES = 16


class _Classifier(L.LightningModule):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.bn_training_flags: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        flags = {n.args[5] for n in self.backbone.graph_module.graph.nodes if n.target is torch.ops.aten.batch_norm.default}
        self.bn_training_flags.append((self.current_epoch, flags == {True}))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _fp32() -> nn.Module:
    torch.manual_seed(0)
    model = TinyMobile()
    train(model, steps=5, lr=1e-2)
    return model


def _loader(seed: int, shuffle: bool) -> DataLoader:
    x, y = synthetic_batch(64, seed=seed, res=RES)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle)


def test_fit_validate_checkpoint_and_reload(tmp_path: Path) -> None:
    example = synthetic_batch(2, seed=0, res=RES)[0]
    fp32 = _fp32()
    module = _Classifier(prepare_qat(fp32, example))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_last=True)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=1, callbacks=[checkpoint, QATSchedule(freeze_observer_epoch=1, freeze_bn_epoch=1)],
        default_root_dir=tmp_path,
    )
    L.seed_everything(0, verbose=False)
    trainer.fit(module, _loader(1, True), _loader(2, False))

    qat: QATModel = module.backbone
    # epoch 0 trains BN in train mode even after the sanity validation; epoch 1 has BN frozen
    assert {flag for epoch, flag in module.bn_training_flags if epoch == 0} == {True}
    assert {flag for epoch, flag in module.bn_training_flags if epoch == 1} == {False}
    assert qat.observers_frozen and qat.bn_frozen

    reloaded = _Classifier(prepare_qat(fp32, example))
    state = torch.load(Path(checkpoint.last_model_path), weights_only=False)["state_dict"]
    reloaded.load_state_dict(state)
    module.eval()
    reloaded.eval()
    x = synthetic_batch(32, seed=3, res=RES)[0]
    with torch.no_grad():
        assert torch.equal(module(x), reloaded(x))
