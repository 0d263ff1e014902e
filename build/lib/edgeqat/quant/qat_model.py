"""QATModel: a prepared (fake-quant) graph that behaves like an ordinary module under Lightning.

An exported graph bakes ``training`` into its BatchNorm/dropout calls, so ``module.train()`` alone
changes nothing. torchao's ``allow_exported_model_train_eval`` patches ``train``/``eval`` on the
instance, but (a) Lightning's evaluation loop restores modes by assigning ``module.training``
directly, which never reaches the patch, so training would silently continue with eval-mode BN
after the first validation; (b) its pattern rewrite resets dropout ``p`` to 0.5 and BN
momentum/eps to their defaults; (c) a forward pre-hook on the graph cannot fix this, because the
forward being called is looked up before hooks run (the first call after a switch would use the
stale graph) and GraphModule drops forward hooks on deepcopy.

So the graph is wrapped: ``QATModel.forward`` reads ``self.training`` (however it was set), flips
only the train flag of those calls when it changed, then runs the graph.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx import GraphModule

from edgeqat.quant.bias_rounding import set_bias_rounding_mode

__all__ = ["QATModel", "freeze_bn_stats", "freeze_observers", "restore_train_eval_methods", "set_graph_mode"]

aten = torch.ops.aten

# op -> position of its ``training``/``train`` argument
_TRAIN_FLAG_ARG = {
    aten.batch_norm.default: 5,
    aten.dropout.default: 2,
    aten.feature_dropout.default: 2,
    aten.alpha_dropout.default: 2,
    aten.feature_alpha_dropout.default: 2,
}


def set_graph_mode(gm: GraphModule, training: bool, bn_training: bool | None = None) -> None:
    """Rewrite the train flag of BN (``bn_training``, default ``training``) and dropout calls in place."""
    bn_training = training if bn_training is None else bn_training
    changed = False
    for node in gm.graph.nodes:
        pos = _TRAIN_FLAG_ARG.get(node.target) if node.op == "call_function" else None
        if pos is None or len(node.args) <= pos:
            continue
        flag = bn_training if node.target is aten.batch_norm.default else training
        if node.args[pos] != flag:
            args = list(node.args)
            args[pos] = flag
            node.args = tuple(args)
            changed = True
    if changed:
        gm.recompile()


def restore_train_eval_methods(gm: GraphModule) -> GraphModule:
    """Undo the per-instance ``train``/``eval`` overrides torch.export/torchao install (they raise)."""
    for name in ("train", "eval"):
        gm.__dict__.pop(name, None)
    return gm


class QATModel(nn.Module):
    """A fake-quant graph from ``prepare_qat``; train/eval, state_dict and deepcopy work as usual.

    Observers learn only in training mode (validation never moves the scales); ``freeze_observers``
    and ``freeze_bn_stats`` switch learning off for good.
    """

    def __init__(self, graph_module: GraphModule) -> None:
        super().__init__()
        self.graph_module = restore_train_eval_methods(graph_module)
        self.observers_frozen = False
        self.bn_frozen = False
        self._synced: tuple[bool, bool, bool] | None = None
        self.sync_mode()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sync_mode()
        return self.graph_module(x)

    def sync_mode(self) -> None:
        """Make the graph's BN/dropout flags and the observers match ``self.training``."""
        state = (self.training, self.bn_frozen, self.observers_frozen)
        if state == self._synced:
            return
        bn_training = self.training and not self.bn_frozen
        set_graph_mode(self.graph_module, self.training, bn_training)
        set_bias_rounding_mode(self.graph_module, bn_uses_running_stats=not bn_training)
        from torchao.quantization.pt2e import disable_observer, enable_observer

        observe = self.training and not self.observers_frozen
        self.graph_module.apply(enable_observer if observe else disable_observer)
        self._synced = state


def _as_qat_model(prepared: object, caller: str) -> QATModel:
    if not isinstance(prepared, QATModel):
        raise TypeError(
            f"{caller} expects the QATModel returned by edgeqat.quant.prepare_qat, got {type(prepared).__name__}."
        )
    return prepared


def freeze_observers(prepared: QATModel) -> None:
    """Stop observer updates: scales and zero points stay fixed, fake-quant stays on.

    Used late in QAT so the last epochs train against the qparams that will be exported.
    """
    model = _as_qat_model(prepared, "freeze_observers")
    model.observers_frozen = True
    model.sync_mode()


def freeze_bn_stats(prepared: QATModel) -> None:
    """Stop BatchNorm running-statistic updates; BN normalizes with its running stats from now on.

    Same semantics as torch.ao's ``freeze_bn_stats``: the simulated conv-BN fold then matches the
    fold done at convert time. Persists across ``train()``/``eval()`` switches.
    """
    model = _as_qat_model(prepared, "freeze_bn_stats")
    model.bn_frozen = True
    model.sync_mode()
