"""DatasetStats: sample counts and class distribution per split, so imbalance is visible in MLflow."""

from __future__ import annotations

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from edgeqat.tracking import RunRecorder

WARNING_TAG = "edgeqat.data_warning"


def class_distribution(labels: np.ndarray, split_indices: dict[str, np.ndarray], num_classes: int
                       ) -> dict[str, np.ndarray]:
    """Per split, the number of samples of each class."""
    return {split: np.bincount(labels[idx], minlength=num_classes) for split, idx in split_indices.items()}


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest class over smallest; ``inf`` when a class has no sample."""
    return float("inf") if counts.min() == 0 else float(counts.max() / counts.min())


class DatasetStats(L.Callback):
    """Logs, once per job, ``data/<split>/count``, ``data/<split>/imbalance_ratio``, the class table
    (``data/class_distribution.json``), a bar chart, the dataset as an MLflow input, and a warning tag
    when a class is missing from a split or the imbalance exceeds ``max_imbalance``.
    """

    def __init__(self, recorder: RunRecorder, max_imbalance: float = 3.0) -> None:
        if max_imbalance < 1:
            raise ValueError(f"max_imbalance={max_imbalance} must be >= 1 (largest / smallest class)")
        self.recorder = recorder
        self.max_imbalance = max_imbalance
        self._done = False

    @override
    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._done:
            return
        dm = trainer.datamodule
        s = dm.image_set
        dist = class_distribution(s.labels, dm.split_indices, s.num_classes)
        metrics, warnings = {}, []
        for split, counts in dist.items():
            ratio = imbalance_ratio(counts)
            metrics[f"data/{split}/count"] = float(counts.sum())
            metrics[f"data/{split}/imbalance_ratio"] = ratio if np.isfinite(ratio) else -1.0
            missing = [s.class_names[i] for i in np.flatnonzero(counts == 0)]
            if missing:
                warnings.append(f"{split}: no samples of class(es) {', '.join(missing[:5])}")
            elif ratio > self.max_imbalance:
                warnings.append(f"{split}: imbalance {ratio:.1f} > {self.max_imbalance}")
        self.recorder.log_metrics(metrics)
        self.recorder.log_table({"class": list(s.class_names), **{split: c.tolist() for split, c in dist.items()}},
                                "data/class_distribution.json")
        self.recorder.log_figure(_bar_chart(s.class_names, dist, s.name), "data/class_distribution.png")
        self.recorder.log_input(name=s.name, digest=s.digest(), source=s.uri)
        if warnings:
            self.recorder.set_tags({WARNING_TAG: "; ".join(warnings)[:1000]})
        self._done = True


def _bar_chart(class_names: list[str], dist: dict[str, np.ndarray], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(class_names)), 3.5))
    width = 0.8 / len(dist)
    x = np.arange(len(class_names))
    for i, (split, counts) in enumerate(dist.items()):
        ax.bar(x + i * width, counts, width, label=f"{split} ({counts.sum()})")
    ax.set_xticks(x + width * (len(dist) - 1) / 2, class_names, rotation=45 if len(class_names) > 12 else 0)
    ax.set(title=f"{title}: samples per class", ylabel="samples")
    ax.legend()
    plt.close(fig)
    return fig
