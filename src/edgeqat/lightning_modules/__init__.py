from edgeqat.lightning_modules.classifier import ClassifierModule

__all__ = ["ClassifierModule"]
