"""Shared fixtures: the real composed config, shrunk for CPU tests, and an isolated MLflow store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from edgeqat.config import compose_config

pytest_plugins = ["tests.fixtures.servers"]

# A seconds-long job: tiny digits images, one epoch, FP32 only, no progress bars.
TINY = [
    "data=digits",
    "data.image_size=16",
    "model=mobilenetv3_small_100",
    "quant=fp32",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite tracking store under ``tmp_path``, no run inherited from the environment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture
def compose(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real config tree with the tiny overrides plus the test's own."""

    def _compose(*overrides: str, tiny: bool = True) -> DictConfig:
        base = [*TINY, f"output_dir={tmp_path / 'outputs'}"] if tiny else []
        return compose_config([*base, *overrides])

    return _compose


@pytest.fixture(autouse=True)
def _cpu_threads() -> Iterator[None]:
    import torch

    torch.set_num_threads(2)
    yield
