"""The local tracking stack: SeaweedFS as S3 + an MLflow server, for development and tests.

``edgeqat stack up|down|status`` (:mod:`edgeqat.stack.cli`) drives :func:`stack_up`,
:func:`stack_down` and :func:`stack_status`; the test fixtures start single servers with
:func:`start_seaweedfs` and :func:`start_mlflow_server`; :func:`scrub_secrets` masks secrets
in a config before it is logged.
"""

from edgeqat.stack.errors import (
    BinaryNotFoundError,
    CredentialsError,
    PortInUseError,
    StackError,
    StartupError,
)
from edgeqat.stack.mlflow_server import MlflowServerConfig, start_mlflow_server
from edgeqat.stack.s3 import S3Credentials, S3Error
from edgeqat.stack.seaweed import SeaweedConfig, SeaweedPorts, start_seaweedfs
from edgeqat.tracking.secrets import scrub_secrets
from edgeqat.stack.stack import (
    StackConfig,
    StackInfo,
    StackStatus,
    read_stack_env,
    stack_down,
    stack_status,
    stack_up,
)

__all__ = [
    "BinaryNotFoundError",
    "CredentialsError",
    "MlflowServerConfig",
    "PortInUseError",
    "S3Credentials",
    "S3Error",
    "SeaweedConfig",
    "SeaweedPorts",
    "StackConfig",
    "StackError",
    "StackInfo",
    "StackStatus",
    "StartupError",
    "read_stack_env",
    "scrub_secrets",
    "stack_down",
    "stack_status",
    "stack_up",
    "start_mlflow_server",
    "start_seaweedfs",
]
