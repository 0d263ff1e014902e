"""Fixtures for the quant tests: models trained once per session, artifacts exported once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeqat.quant import resolve_weight_format
from tests.unit.quant.tiny import Artifacts, make_artifacts

PARITY_MODELS = ["test_resnet", "tiny_mobile", "tiny_shuffle"]


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifacts]:
    """Lazily built per model name: FP32 -> QAT -> convert -> ONNX (FP32 and INT8).

    ``artifacts["test_resnet"]`` has this CPU's weight format (``quant.weight_range=auto``);
    ``artifacts["test_resnet:int8"]`` forces one (``:int8``, ``:int7``, ``:u8``).
    """
    out = tmp_path_factory.mktemp("quant_artifacts")
    cache: dict[tuple[str, str], Artifacts] = {}  # by (model, resolved range): "auto" shares its build

    class _Lazy(dict):
        def __missing__(self, name: str) -> Artifacts:
            model, _, weight_range = name.partition(":")
            key = (model, resolve_weight_format(weight_range or "auto").range.value)
            if key not in cache:
                cache[key] = make_artifacts(model, Path(out), key[1])
            self[name] = cache[key]
            return cache[key]

    return _Lazy()
