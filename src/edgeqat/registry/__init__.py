"""The model registry hand-off: logged ONNX models, registered INT8 versions with their figures, promotion.

A run logs its INT8 and FP32 files as MLflow LoggedModels (``logged_model``) and registers the INT8
one (``versions``); people then promote a version by alias or legacy stage (``promote``), which is
what the deploy controller follows.
"""

from edgeqat.registry.logged_model import LoggedModelSpec, apply_logged_model
from edgeqat.registry.metadata import preprocessing_from_datamodule, sha256_file, version_tags
from edgeqat.registry.promote import PromoteError, promote, resolve_version
from edgeqat.registry.versions import find_run_version, register_version

__all__ = [
    "LoggedModelSpec",
    "PromoteError",
    "apply_logged_model",
    "find_run_version",
    "preprocessing_from_datamodule",
    "promote",
    "register_version",
    "resolve_version",
    "sha256_file",
    "version_tags",
]
