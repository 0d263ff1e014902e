"""Promotion, both ways people do it: an alias (MLflow 3) or a legacy stage (deprecated, still used).

The deploy controller follows either; a change made here or in the MLflow UI counts the same, because
both end up as the same registry state.
"""

from __future__ import annotations

import warnings
from typing import Any

from edgeqat.errors import EdgeqatError

STAGES = ("None", "Staging", "Production", "Archived")


class PromoteError(EdgeqatError):
    """The model, version, alias or stage asked for does not exist; the message names the fix."""


def check_promotion(alias: str | None, stage: str | None) -> str | None:
    """Validate the request before any server is asked; returns the stage's canonical spelling."""
    if (alias is None) == (stage is None):
        raise PromoteError("Pass exactly one of --alias NAME or --stage Staging|Production|Archived")
    if alias is not None and (not alias or alias.lower() == "latest" or (alias[0] in "vV" and alias[1:].isdigit())):
        raise PromoteError(f"--alias {alias!r} is reserved by MLflow (latest, v<N>): choose another name")
    canonical = {s.lower(): s for s in STAGES}.get(str(stage).lower()) if stage is not None else None
    if stage is not None and canonical is None:
        raise PromoteError(f"--stage {stage!r}: choose one of {', '.join(STAGES)}")
    return canonical


def promote(client: Any, name: str, version: str | int, *, alias: str | None = None,
            stage: str | None = None) -> Any:
    """Point ``alias`` at ``version`` or move it to ``stage``; returns the version. Exactly one of the two."""
    from mlflow.exceptions import MlflowException

    from edgeqat.tracking.run import credentials_error

    canonical = check_promotion(alias, stage)
    try:
        mv = client.get_model_version(name, str(version))
    except Exception as e:
        from edgeqat.tracking.spool import is_transient

        if (refused := credentials_error(client.tracking_uri, e, "read and promote versions")) is not None:
            raise refused from None
        if is_transient(e) or not isinstance(e, MlflowException):
            raise PromoteError(f"Cannot reach the tracking server at {client.tracking_uri}: start it (edgeqat "
                               "stack up) or pass --tracking-uri") from e
        raise PromoteError(f"No version {version} of registered model {name!r} at {client.tracking_uri} "
                           f"({e.error_code}): check the name and version in the MLflow UI's Models page") from e
    try:
        if alias is not None:
            client.set_registered_model_alias(name, alias, mv.version)
            return client.get_model_version(name, mv.version)
        with warnings.catch_warnings():  # stages are deprecated in MLflow 3; people still use them
            warnings.simplefilter("ignore", FutureWarning)
            return client.transition_model_version_stage(name, mv.version, canonical)
    except Exception as e:  # a user who may read the model but not change it
        if (refused := credentials_error(client.tracking_uri, e, f"manage {name!r}")) is not None:
            raise refused from None
        raise


def resolve_version(client: Any, name: str, *, alias: str | None = None, stage: str | None = None) -> Any | None:
    """The version an alias points at, or the newest version in a stage; None where there is none."""
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            latest = client.get_latest_versions(name, stages=[stage])
        return latest[0] if latest else None
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
