"""``edgeqat deploy serve | reconcile | targets``: the controller, one pass of it, the known targets."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from edgeqat.stack.webhook import DEFAULT_DEPLOY_PORT


def client_environment(home: Path) -> str:
    """Tracking URI and S3 settings for the controller: the environment, else the local stack's.

    boto3 (the publisher) needs keys; for a loopback S3 endpoint without them, the local stack's
    defaults apply, as for every other edgeqat S3 client.
    """
    from edgeqat.stack.s3 import with_local_s3_keys
    from edgeqat.stack.stack import read_stack_env
    from edgeqat.tracking import resolve_tracking_uri

    stack = read_stack_env(home)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"):
        if key in stack and not os.environ.get(key):
            os.environ[key] = stack[key]
    os.environ.update(with_local_s3_keys(os.environ))
    return resolve_tracking_uri(None)


def build_controller(args: argparse.Namespace) -> Any:
    from edgeqat.deploy.controller import Controller
    from edgeqat.deploy.signing import load_or_create_signer
    from edgeqat.deploy.state import DeployState
    from edgeqat.deploy.targets import load_target

    home = Path(args.home).expanduser().absolute()
    tracking_uri = args.tracking_uri or client_environment(home)
    targets = [load_target(name) for name in (args.target or ["local"])]
    workdir = home / "deploy" / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    state = DeployState(args.state or home / "deploy" / "state.db")
    return Controller(tracking_uri, targets, state, load_or_create_signer(home), workdir,
                      poll_interval_s=getattr(args, "poll_interval", 30.0))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edgeqat.deploy.webhook import create_app
    from edgeqat.stack.processes import LOOPBACK, ensure_port_free
    from edgeqat.stack.webhook import load_webhook_secret

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("edgeqat.deploy").setLevel(logging.INFO)  # one line per gate decision, in the log
    home = Path(args.home).expanduser().absolute()
    ensure_port_free(args.host if args.host != "0.0.0.0" else LOOPBACK, args.port, service="deploy controller",
                     fix="stop that process, or pass --port N (and re-register the webhook: edgeqat stack up "
                         "--deploy-port N)")
    secret = load_webhook_secret(home / "secrets")
    controller = build_controller(args)
    print(f"deploy controller: targets {', '.join(controller.targets)}; webhook http://{args.host}:{args.port}/webhook; "
          f"polling {controller.tracking_uri} every {args.poll_interval:g} s", flush=True)
    controller.start()
    try:
        uvicorn.Server(uvicorn.Config(create_app(controller, secret), host=args.host, port=args.port,
                                      log_level="warning", lifespan="off")).run()
    finally:
        controller.stop()
        controller.state.close()
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    controller = build_controller(args)
    try:
        for target in controller.targets.values():
            print(f"{target.name}: {controller.reconcile(target)}")
        controller.surface_heartbeats()
    finally:
        controller.state.close()
    return 0


def _targets(args: argparse.Namespace) -> int:
    from edgeqat.deploy.targets import list_targets, load_target

    for name in list_targets():
        t = load_target(name)
        follows = " or ".join(x for x in (f"alias {t.follows.alias}" if t.follows.alias else "",
                                          f"stage {t.follows.stage}" if t.follows.stage else "") if x)
        print(f"{name}\tfollows {follows}\tpublishes to {t.publish}")
    return 0


def add_deploy_parser(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser("deploy", help="the deployment controller: registry -> gate -> publish")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", action="append", help="deploy target (conf/deploy/<name>.yaml or a YAML "
                       "path); repeat for several; default: local")
        p.add_argument("--home", default=".edgeqat", help="stack home: signing key, secrets, state (default .edgeqat)")
        p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the local stack's")
        p.add_argument("--state", help="state database (default <home>/deploy/state.db)")

    serve = deploy_sub.add_parser("serve", help="receive registry webhooks and poll; gate and publish")
    common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_DEPLOY_PORT)
    serve.add_argument("--poll-interval", type=float, default=30.0,
                       help="seconds between polls (stage transitions, lost deliveries, downtime)")
    serve.set_defaults(func=_serve)
    once = deploy_sub.add_parser("reconcile", help="one pass over the targets, without the webhook server")
    common(once)
    once.set_defaults(func=_reconcile)
    targets = deploy_sub.add_parser("targets", help="list the deploy targets")
    targets.set_defaults(func=_targets)
