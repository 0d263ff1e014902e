"""``edgeqat stack up | down | status``: the argparse face of :mod:`edgeqat.stack.stack`.

Handlers return the exit code and let :class:`~edgeqat.errors.EdgeqatError` propagate, so the
``edgeqat`` command prints it as one line (exit 2) like every other verb.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from edgeqat.stack.webhook import DEFAULT_DEPLOY_PORT

_HOME_HELP = "state directory: pid files, logs, data, stack.env (default: ./.edgeqat)"


def _up(args: argparse.Namespace) -> int:
    from edgeqat.stack.stack import StackConfig, stack_up

    info = stack_up(StackConfig(
        home=args.home, mlflow_port=args.mlflow_port, s3_port=args.s3_port,
        backend_store_uri=args.backend_store_uri, auth=args.auth, timeout_s=args.timeout,
        workers=args.workers, weed_binary=args.weed_binary, deploy_port=args.deploy_port,
    ))
    print(f"MLFLOW_TRACKING_URI={info.tracking_uri}")
    print(f"MLFLOW_S3_ENDPOINT_URL={info.s3_endpoint_url}")
    if info.auth:
        print(f"Basic auth on: log in as {info.admin_username!r}, password from {info.admin_password_source}")
    print(f"For clients: set -a; . {info.env_file}; set +a")
    return 0


def _down(args: argparse.Namespace) -> int:
    from edgeqat.stack.stack import stack_down

    stack_down(args.home, timeout_s=args.timeout)
    return 0


def _status(args: argparse.Namespace) -> int:
    from edgeqat.stack.stack import stack_status

    status = stack_status(args.home, echo=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps({"services": [asdict(s) for s in status.services], "exit_code": status.exit_code}, indent=2))
    else:
        for s in status.services:
            pid = f"pid {s.pid}" if s.pid else "-"
            print(f"{s.name:<10} {s.state:<10} {pid:<11} {s.url or '-'}{f'  ({s.detail})' if s.detail else ''}")
    return status.exit_code


def add_stack_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``stack`` with ``up``/``down``/``status`` on the ``edgeqat`` sub-command parsers."""
    stack = subparsers.add_parser(
        "stack", help="local S3 (SeaweedFS) + MLflow server for tracking",
        description="Run SeaweedFS and an MLflow server on 127.0.0.1 for local tracking (state under --home).",
    )
    verbs = stack.add_subparsers(dest="stack_command", required=True)

    up = verbs.add_parser("up", help="start what is not running (idempotent); writes <home>/stack.env")
    up.add_argument("--home", type=Path, default=Path(".edgeqat"), help=_HOME_HELP)
    up.add_argument("--auth", action="store_true",
                    help="MLflow basic auth; admin password from $EDGEQAT_ADMIN_PASSWORD or generated once")
    up.add_argument("--mlflow-port", type=int, metavar="N", help="MLflow port (default 5000; 0: any free port)")
    up.add_argument("--s3-port", type=int, metavar="N", help="S3 port (default 8333; 0: any free port)")
    up.add_argument("--backend-store-uri", metavar="URI",
                    help="sqlite:///... or postgresql://... (default: SQLite under <home>/mlflow/)")
    up.add_argument("--timeout", type=float, default=90.0, metavar="S", help="seconds to wait for each server")
    up.add_argument("--workers", type=int, default=1, metavar="N", help="MLflow server worker processes")
    up.add_argument("--weed-binary", metavar="PATH", help="the SeaweedFS `weed` binary (default: PATH)")
    up.add_argument("--deploy-port", type=int, default=DEFAULT_DEPLOY_PORT, metavar="N",
                    help=f"port of `edgeqat deploy serve` the registry webhook calls (default {DEFAULT_DEPLOY_PORT})")
    up.set_defaults(func=_up)

    down = verbs.add_parser("down", help="stop the servers `stack up` started from --home")
    down.add_argument("--home", type=Path, default=Path(".edgeqat"), help=_HOME_HELP)
    down.add_argument("--timeout", type=float, default=20.0, metavar="S", help="seconds before SIGKILL")
    down.set_defaults(func=_down)

    status = verbs.add_parser("status", help="state of each server; exit 0 running, 3 stopped, 1 degraded")
    status.add_argument("--home", type=Path, default=Path(".edgeqat"), help=_HOME_HELP)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)
