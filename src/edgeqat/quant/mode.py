"""Train/eval behaviour of an exported graph, and the two QAT freezes (observers, BN statistics).

An exported graph bakes ``training`` into its BatchNorm/dropout calls, so ``module.train()`` alone
changes nothing. torchao's ``allow_exported_model_train_eval`` patches ``train``/``eval`` but (a)
Lightning's evaluation loop restores modes by assigning ``module.training`` directly, which never
reaches the patch, so training would silently continue with eval-mode BN after the first
validation; and (b) its pattern rewrite resets dropout ``p`` to 0.5 and BN momentum/eps to defaults.
Here a forward pre-hook reads ``module.training`` and flips only the ``training`` flag of those
calls, keeping every other argument.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

__all__ = [
    "enable_train_eval",
    "freeze_bn_stats",
    "freeze_observers",
    "restore_train_eval_methods",
    "set_graph_mode",
]

aten = torch.ops.aten

# op -> position of its ``training``/``train`` argument
_TRAIN_FLAG_ARG = {
    aten.batch_norm.default: 5,
    aten.dropout.default: 2,
    aten.feature_dropout.default: 2,
    aten.alpha_dropout.default: 2,
    aten.feature_alpha_dropout.default: 2,
}
_MODE_ATTR = "_edgeqat_graph_mode"  # (training, bn_training) the graph currently encodes
_BN_FROZEN_ATTR = "_edgeqat_bn_frozen"
_OBSERVERS_FROZEN_ATTR = "_edgeqat_observers_frozen"


def set_graph_mode(gm: GraphModule, training: bool, bn_training: bool | None = None) -> None:
    """Rewrite the train flags of BN (``bn_training``, default ``training``) and dropout calls."""
    bn_training = training if bn_training is None else bn_training
    if getattr(gm, _MODE_ATTR, None) == (training, bn_training):
        return
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
    setattr(gm, _MODE_ATTR, (training, bn_training))


def _sync_mode(module: torch.nn.Module, args: tuple) -> None:
    """Forward pre-hook: make the graph match ``module.training`` however it was set.

    Observers learn only in training mode, so validation batches never move the scales.
    """
    training = module.training
    if getattr(module, _MODE_ATTR, (None,))[0] == training and _BN_FROZEN_ATTR not in module.__dict__:
        return
    set_graph_mode(module, training, training and not getattr(module, _BN_FROZEN_ATTR, False))  # type: ignore[arg-type]
    _set_observers(module, training and not getattr(module, _OBSERVERS_FROZEN_ATTR, False))


def _set_observers(module: torch.nn.Module, enabled: bool) -> None:
    from torchao.quantization.pt2e import disable_observer, enable_observer

    module.apply(enable_observer if enabled else disable_observer)


def restore_train_eval_methods(gm: GraphModule) -> GraphModule:
    """Undo the per-instance ``train``/``eval`` overrides torch.export/torchao install (they raise)."""
    for name in ("train", "eval"):
        gm.__dict__.pop(name, None)
    return gm


def enable_train_eval(gm: GraphModule) -> GraphModule:
    """Make ``gm.train()``/``gm.eval()`` (and direct ``training`` assignment) take effect."""
    restore_train_eval_methods(gm)
    if _MODE_ATTR not in gm.__dict__:
        gm.register_forward_pre_hook(_sync_mode)
    set_graph_mode(gm, gm.training)
    return gm


def freeze_observers(prepared: GraphModule) -> None:
    """Stop observer updates: scales and zero points stay fixed, fake-quant stays on.

    Used late in QAT so the last epochs train against the qparams that will be exported.
    """
    setattr(prepared, _OBSERVERS_FROZEN_ATTR, True)
    _set_observers(prepared, enabled=False)


def freeze_bn_stats(prepared: GraphModule) -> None:
    """Stop BatchNorm running-statistic updates; BN normalizes with its running stats from now on.

    Same semantics as torch.ao's ``freeze_bn_stats``: the simulated conv-BN fold then matches the
    fold done at convert time. Persists across ``train()``/``eval()`` switches.
    """
    setattr(prepared, _BN_FROZEN_ATTR, True)
    set_graph_mode(prepared, prepared.training, False)
