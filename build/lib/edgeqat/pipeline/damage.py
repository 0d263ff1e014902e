"""Which classes quantization hurts: per-class accuracy FP32 vs INT8 and the INT8 confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgeqat.tracking import RunRecorder

if TYPE_CHECKING:  # importing edgeqat.quant loads torchao: keep it off the start-up path
    from edgeqat.quant import VerifyResult


def damage_table(class_names: Sequence[str], fp32: VerifyResult, int8: VerifyResult) -> dict[str, list]:
    """Columns: class, test samples, FP32 and INT8 accuracy (ORT, same images), and their difference."""
    support = fp32.confusion.sum(1).astype(int).tolist()
    f, q = np.nan_to_num(fp32.per_class_accuracy), np.nan_to_num(int8.per_class_accuracy)
    return {
        "class": list(class_names),
        "n": support,
        "acc_fp32": [round(float(v), 4) for v in f],
        "acc_int8": [round(float(v), 4) for v in q],
        "delta": [round(float(b - a), 4) for a, b in zip(f, q)],
    }


def log_damage(recorder: RunRecorder, class_names: Sequence[str], fp32: VerifyResult, int8: VerifyResult) -> None:
    """Table ``int8/per_class_damage.json``, figures ``int8/per_class_damage.png`` and ``int8/confusion.png``."""
    table = damage_table(class_names, fp32, int8)
    recorder.log_table(table, "int8/per_class_damage.json")
    recorder.log_figure(_damage_figure(table), "int8/per_class_damage.png")
    recorder.log_figure(_confusion_figure(class_names, int8.confusion), "int8/confusion.png")
    worst = int(np.argmin(table["delta"]))
    recorder.log_metrics({"int8/worst_class_delta": table["delta"][worst]})
    recorder.set_tags({"edgeqat.int8_worst_class": f"{table['class'][worst]} ({table['delta'][worst]:+.3f})"})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _damage_figure(table: dict[str, list]):
    plt = _pyplot()
    x = np.arange(len(table["class"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(x)), 3.5))
    ax.bar(x - 0.2, table["acc_fp32"], 0.4, label="FP32 (ORT)")
    ax.bar(x + 0.2, table["acc_int8"], 0.4, label="INT8 (ORT)")
    for xi, d in zip(x, table["delta"]):
        ax.annotate(f"{d:+.3f}", (xi, 1.01), ha="center", fontsize=7, color="crimson" if d < 0 else "gray")
    ax.set_xticks(x, table["class"], rotation=45 if len(x) > 12 else 0)
    ax.set(ylim=(0, 1.08), ylabel="test accuracy", title="Per-class accuracy: FP32 vs INT8")
    ax.legend(loc="lower right")
    plt.close(fig)
    return fig


def _confusion_figure(class_names: Sequence[str], confusion: np.ndarray):
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * n + 1.5), max(3.5, 0.45 * n + 1)))
    ax.imshow(confusion, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if confusion[i, j] > confusion.max() / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=45 if n > 12 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title="INT8 confusion matrix (ORT, test split)")
    plt.close(fig)
    return fig
