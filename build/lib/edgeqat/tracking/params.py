"""Config -> MLflow params: flat ``a.b.c`` keys, values stringified and cut to MLflow's limit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings; lists stay one param (``[224, 320]``) so keys stay stable."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_VALUE]
    return out
