"""The ``edgeqat`` command: train, models, sensitivity, stack, data, demo, sync, promote, deploy, agent."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from edgeqat.errors import EdgeqatError


def _train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from edgeqat.config import compose_config

    overrides = list(args.overrides) + shlex.split(args.overrides_string or "")
    if args.multirun:
        return _sweep(overrides, args.cfg)
    if any(o.startswith("resume=") for o in overrides):  # the run's own overrides first
        from edgeqat.pipeline.resume import resume_overrides

        uri = next((o.split("=", 1)[1] for o in overrides if o.startswith("tracking.tracking_uri=")), None)
        overrides = resume_overrides(overrides, uri)
    cfg = compose_config(overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from edgeqat.train import train

    result = train(cfg, overrides)
    if result.spool_path:
        print(f"edgeqat: warning: the tracking server (or its artifact store) was unreachable at the end; "
              f"run {result.run_id} is "
              f"spooled at {result.spool_path}: upload it with `edgeqat sync {result.spool_path}`", file=sys.stderr)
        return 3
    return 0


def _sweep(overrides: list[str], show_jobs: bool) -> int:
    from edgeqat.sweep import plan_sweep, run_sweep

    if show_jobs:
        plan = plan_sweep(overrides)
        print("\n".join(f"job {i}: {plan.label(job)}" for i, job in enumerate(plan.jobs)))
        return 0
    result = run_sweep(overrides)
    failed = [r for r in result.rows if r.status != "FINISHED"]
    best = f"; best: {result.best.overrides} (run {result.best.run_id})" if result.best else ""
    print(f"sweep {result.parent_run_id}: {len(result.rows) - len(failed)} of {len(result.rows) + result.missing} "
          f"jobs finished{best}")
    for r in failed:
        print(f"edgeqat: warning: job {r.job} ({r.overrides}) {r.status}: {r.failure or 'no reason recorded'}",
              file=sys.stderr)
    return 0 if result.status == "FINISHED" else 1


def _models_list(args: argparse.Namespace) -> int:
    from edgeqat.models import list_backbones

    names = list_backbones(args.pattern)
    print("\n".join(names))
    return 0 if names else 1


def _sync(args: argparse.Namespace) -> int:
    from edgeqat.tracking import sync_spool

    result = sync_spool(args.spool, args.tracking_uri)
    print(f"run {result.run_id}: uploaded {result.uploaded} operations"
          + (f" ({result.already_done} were already uploaded)" if result.already_done else ""))
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    import logging
    import os

    # a report on stdout, errors as one line: not MLflow's store set-up INFO lines and download bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # after the import, which sets it up

    from edgeqat.pipeline.run_sensitivity import sensitivity_of_run
    from edgeqat.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(args.tracking_uri))
    report = sensitivity_of_run(client, args.run_id, scope=args.scope, images=args.images)
    print(f"run {args.run_id}: INT8 {report.int8_accuracy:.4f} on {report.n_images} validation images; "
          f"most recovered left float ({report.scope}):")
    for row in report.layers[:args.top]:
        share = "" if row.latency_share is None else f", {row.latency_share * 100:.1f} % of the time"
        what = f"{row.op} output, unrounded" if row.kind == "activation" else row.op
        print(f"  {row.layer} ({what}): {row.accuracy:.4f} ({row.recovered * 100:+.2f} pt{share})")
    print("logged: int8/sensitivity.json, int8/sensitivity_table.json, int8/sensitivity.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeqat", description="Any CNN backbone to a verified INT8 edge model, "
                                     "every step tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train, quantize and export one model (one MLflow run)")
    train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=resnet18 trainer.max_epochs=2")
    train.add_argument("--overrides", dest="overrides_string", metavar="STR",
                       help="overrides as one shell-quoted string (what `mlflow run -P overrides=...` passes)")
    train.add_argument("-m", "--multirun", action="store_true",
                       help="a sweep (key=a,b ...): one parent MLflow run, a child run per job, Hydra's launcher "
                            "(hydra/launcher=joblib for parallel processes)")
    train.add_argument("--cfg", action="store_true", help="print the composed config (with -m: the jobs) and exit")
    train.set_defaults(func=_train)

    models = sub.add_parser("models", help="backbones")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    ls = models_sub.add_parser("list", help="list buildable backbones (timm + torchvision adapters)")
    ls.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'mobilenet*'")
    ls.set_defaults(func=_models_list)

    from edgeqat.data.cli import add_data_parser
    from edgeqat.demo import add_demo_parser
    from edgeqat.deploy.cli import add_deploy_parser
    from edgeqat.registry.cli import add_promote_parser
    from edgeqat.stack.cli import add_stack_parser

    add_stack_parser(sub)
    add_data_parser(sub)
    add_demo_parser(sub)
    add_promote_parser(sub)
    add_deploy_parser(sub)
    sub.add_parser("agent", help="the device agent: edgeqat agent --target NAME | edgeqat agent predict IMAGE...",
                   add_help=False)

    from edgeqat.agent.cli import _positive  # stdlib only: the parser stays light

    sens = sub.add_parser("sensitivity", help="per-layer INT8 sensitivity of a finished run, logged into it")
    sens.add_argument("run_id", help="a run trained with quant=qat_int8 or quant=ptq_int8")
    sens.add_argument("--scope", choices=["weights", "layer"], default=None,  # quant.sensitivity.SCOPES
                      help="left float: the weights, or the input activation too (default: the run's quant.float_scope)")
    sens.add_argument("--images", type=_positive(int), default=None,
                      help="validation images (default: the run's quant.sensitivity_images)")
    sens.add_argument("--top", type=_positive(int), default=10, help="rows printed (all are logged)")
    sens.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    sens.set_defaults(func=_sensitivity)

    sync = sub.add_parser("sync", help="upload a run spooled while the tracking server was unreachable")
    sync.add_argument("spool", help="the spool directory the job printed (outputs/spool/<run_id>)")
    sync.add_argument("--tracking-uri", help="server to upload to (default: the one the run was logging to)")
    sync.set_defaults(func=_sync)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:  # the device side: no torch, Lightning or MLflow on its import path
        from edgeqat.agent.cli import main as agent_main

        return agent_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeqatError as e:
        from edgeqat.tracking import fail_attached_run

        fail_attached_run(e)  # under `mlflow run`, its run must not stay RUNNING
        print(f"edgeqat: error: {e}", file=sys.stderr)
        return 2
    except BaseException as e:
        if not isinstance(e, _sigterm_types()):
            raise
        print("edgeqat: stopped by SIGTERM; the run is KILLED and tagged with its resumable checkpoint "
              "(edgeqat.checkpoint_uri): resume with ckpt_path=<file>", file=sys.stderr)
        return 143


def _sigterm_types() -> tuple[type[BaseException], ...]:
    """How a SIGTERM surfaces, from the modules that can raise it: only those already imported.

    Looked up in ``sys.modules`` rather than imported, so that ``--help`` and argument errors never
    import Lightning (seconds of CPU) just to name an exception nothing could have raised.
    """
    types: list[type[BaseException]] = []
    if (run := sys.modules.get("edgeqat.tracking.run")) is not None:
        types.append(run.Preempted)
    if (lightning := sys.modules.get("lightning.pytorch.utilities.exceptions")) is not None:
        types.append(lightning.SIGTERMException)
    return tuple(types)
