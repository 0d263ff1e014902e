"""Datasets as LightningDataModules over a registry of image sources.

Names are imported on first use (PEP 562), so the CLI can build its parser, and ``data publish``
can answer ``--help``, without importing Lightning and torch.
"""

from __future__ import annotations

from edgeqat._lazy import lazy_exports

_EXPORTS = {
    "ClassificationDataModule": "datamodule",
    "DataSourceError": "sources",
    "ImageSet": "sources",
    "list_sources": "sources",
    "load_source": "sources",
    "register_source": "sources",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
