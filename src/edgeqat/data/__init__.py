"""Datasets as LightningDataModules over a registry of image sources.

Names are imported on first use (PEP 562), so the CLI can build its parser, and ``data publish``
can answer ``--help``, without importing Lightning and torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassificationDataModule": "datamodule",
    "DataSourceError": "sources",
    "ImageSet": "sources",
    "list_sources": "sources",
    "load_source": "sources",
    "register_source": "sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgeqat.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgeqat.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
