"""The job's phases after ``build``: FP32 fit, the quantization recipe, export and verification."""

from edgeqat.pipeline.recipes import JobContext, list_recipes, run_recipe
from edgeqat.pipeline.trainer import fit_and_test, make_checkpoint, make_trainer

__all__ = ["JobContext", "fit_and_test", "list_recipes", "make_checkpoint", "make_trainer", "run_recipe"]
