"""``edgeqat promote NAME VERSION --alias production | --stage Production``."""

from __future__ import annotations

import argparse


def _promote(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from edgeqat.registry.promote import check_promotion, promote
    from edgeqat.tracking import resolve_tracking_uri

    check_promotion(args.alias, args.stage)  # before a client: a bad request touches no server or database
    from edgeqat.tracking.recorder import configure_http_retries

    configure_http_retries(max_retries=1, timeout_s=10)  # a person is waiting: fail in seconds, not minutes
    client = MlflowClient(resolve_tracking_uri(args.tracking_uri))
    mv = promote(client, args.name, args.version, alias=args.alias, stage=args.stage)
    where = f"alias {args.alias!r}" if args.alias else f"stage {mv.current_stage!r}"
    print(f"{args.name} version {mv.version} -> {where} ({client.tracking_uri})")
    return 0


def add_promote_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("promote", help="point an alias at a registered version, or move it to a legacy stage")
    p.add_argument("name", help="registered model, e.g. resnet18-mnist5k-int8")
    p.add_argument("version", help="version number")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--alias", help="MLflow 3 alias, e.g. production or staging")
    how.add_argument("--stage", help="legacy stage: Staging, Production or Archived (deprecated in MLflow 3)")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.set_defaults(func=_promote)
