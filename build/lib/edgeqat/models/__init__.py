"""Backbone factory: timm's registry plus a small torchvision adapter."""

from edgeqat.models.factory import UnknownModelError, create_backbone, list_backbones

__all__ = ["UnknownModelError", "create_backbone", "list_backbones"]
