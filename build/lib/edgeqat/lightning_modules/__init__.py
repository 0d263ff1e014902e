from edgeqat.lightning_modules.classifier import ClassifierModule
from edgeqat.lightning_modules.distillation import Distillation

__all__ = ["ClassifierModule", "Distillation"]
