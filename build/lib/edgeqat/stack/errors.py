"""Errors of the local stack; each message is one line that names the bad value and the fix."""

from __future__ import annotations

from edgeqat.errors import EdgeqatError


class StackError(EdgeqatError):
    """The stack cannot start, stop or report as asked; ``str(error)`` says what to do."""


class PortInUseError(StackError):
    """A port the stack needs is held by another process."""


class BinaryNotFoundError(StackError):
    """A server binary (``weed``, ``mlflow``) is not installed where we look."""


class CredentialsError(StackError):
    """S3 keys or the MLflow admin password do not match the running servers."""


class StartupError(StackError):
    """A server exited or stayed unhealthy while starting; the message names its log file."""
