"""Datasets as LightningDataModules over a registry of image sources."""

from edgeqat.data.datamodule import ClassificationDataModule
from edgeqat.data.sources import DataSourceError, ImageSet, list_sources, load_source, register_source

__all__ = [
    "ClassificationDataModule",
    "DataSourceError",
    "ImageSet",
    "list_sources",
    "load_source",
    "register_source",
]
