"""``edgeqat demo``: the newcomer's whole tour in one command.

1. ``edgeqat stack up`` (idempotent: a running stack is reused), SeaweedFS + MLflow server on loopback;
2. ``mlflow run <repo> --env-manager local -P overrides=...`` with the stack's client environment
   (``<home>/stack.env``), its output streamed here: artifacts go through the server's proxy into
   SeaweedFS, so the job needs no S3 keys;
3. where to look: the run in the MLflow UI, and the models as ``runs:/`` URIs and as the S3 objects
   they are (listed with boto3, so what is printed is known to exist);
4. the stack stays up so the UI can be opened (``--down`` stops it at the end; its data stays).
"""

from __future__ import annotations

import argparse
import codecs
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlparse

from edgeqat.errors import EdgeqatError

if TYPE_CHECKING:
    from mlflow.entities import Run

    from edgeqat.deploy.demo_loop import LoopResult

Echo = Callable[[str], None]
DEFAULT_EXPERIMENT = "edgeqat-demo"
MODEL_FILES = (("int8", "int8/model.onnx"), ("fp32", "fp32/model.onnx"))
_RUN_ID = re.compile(r"ID '([0-9a-f]{32})'")  # mlflow run: "=== Running command ... in run with ID '<id>' ==="
_PROJECT_NAME = re.compile(r"^name:\s*edgeqat\s*$", re.MULTILINE)
_INHERITED_RUN_VARS = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI",
                       "MLFLOW_S3_ENDPOINT_URL")


class DemoError(EdgeqatError):
    """The demo cannot run as asked (no project, a stack that needs a login); the message names the fix."""


@dataclass(frozen=True)
class DemoOptions:
    """What ``edgeqat demo`` runs; ports ``None`` = the stack's defaults (or the running ones), 0 = free."""

    home: Path = Path(".edgeqat")
    overrides: str = ""
    experiment_name: str = DEFAULT_EXPERIMENT
    keep_stack: bool = True
    mlflow_port: int | None = None
    s3_port: int | None = None
    project_dir: Path | None = None
    deploy: bool = True  # go on after training: register, promote, gate, publish, run on a local agent
    deploy_port: int | None = None  # the deploy controller's; None: 8765 (or the running one), 0: any free


@dataclass(frozen=True)
class ModelLocation:
    """One exported model of the run, as MLflow names it and as the S3 object it is."""

    name: str  # "int8" | "fp32"
    runs_uri: str  # runs:/<run_id>/int8/model.onnx
    s3_uri: str  # s3://edgeqat-artifacts/<key>
    object_url: str  # <endpoint>/<bucket>/<key> (path-style; needs the S3 keys to GET)
    size_bytes: int


@dataclass(frozen=True)
class DemoResult:
    """How the demo's run ended and where its results are."""

    returncode: int  # of `mlflow run`; 1 also when an expected model is missing
    tracking_uri: str
    run_id: str | None = None
    experiment_id: str | None = None
    ui_url: str | None = None
    models: tuple[ModelLocation, ...] = ()
    notes: tuple[str, ...] = ()
    deployed: LoopResult | None = None


def find_project_dir(explicit: Path | None = None, cwd: Path | None = None) -> Path:
    """The directory holding edgeqat's ``MLproject``: ``explicit``, beside the package, or cwd and its parents.

    Raises:
        DemoError: none of these holds an ``MLproject`` named ``edgeqat``.
    """

    def is_project(path: Path) -> bool:
        mlproject = path / "MLproject"
        return mlproject.is_file() and bool(_PROJECT_NAME.search(mlproject.read_text()))

    if explicit is not None:
        if is_project(Path(explicit)):
            return Path(explicit).resolve()
        raise DemoError(f"--project-dir {explicit} holds no edgeqat MLproject: pass the root of an edgeqat checkout")
    here = Path(__file__).resolve().parent
    start = Path.cwd() if cwd is None else Path(cwd)
    for path in (*here.parents, start.resolve(), *start.resolve().parents):
        if is_project(path):
            return path
    raise DemoError(f"No edgeqat MLproject beside the package ({here}) or in {start} and its parents: run "
                    "`edgeqat demo` inside a checkout of the edgeqat repository, or pass --project-dir <checkout>")


def mlflow_run_command(project_dir: Path, experiment_name: str, overrides: str) -> list[str]:
    """The ``mlflow run`` command line (the same Python, so the same environment)."""
    return [sys.executable, "-m", "mlflow", "run", str(project_dir), "--env-manager", "local",
            "--experiment-name", experiment_name, "-P", f"overrides={overrides}"]


def job_env(stack_env: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment: ours, minus an inherited run or server, plus ``stack.env``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _INHERITED_RUN_VARS}
    env.update(stack_env)
    return env


def stream_process(command: Sequence[str], env: Mapping[str, str], cwd: Path, out: TextIO) -> tuple[int, str | None]:
    """Run ``command``, copying its output to ``out`` as it comes; returns the exit code and the run id seen."""
    proc = subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    run_id, tail = None, ""
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            text = decoder.decode(chunk)
            out.write(text)
            out.flush()
            if run_id is None:
                match = _RUN_ID.search(tail + text)
                run_id = match.group(1) if match else None
                tail = (tail + text)[-200:]  # a match may straddle two chunks
        return proc.wait(), run_id
    finally:
        if proc.poll() is None:  # interrupted: do not leave the job behind
            proc.terminate()
            proc.wait(timeout=30)
        proc.stdout.close()


def _artifacts_location(artifact_uri: str, destination: str | None) -> tuple[str, str]:
    """``(bucket, key prefix)`` of a run's artifacts: an ``s3://`` URI, or the server's proxy root."""
    from edgeqat.stack.s3 import parse_s3_uri

    if artifact_uri.startswith("s3://"):
        return parse_s3_uri(artifact_uri)
    if artifact_uri.startswith("mlflow-artifacts:") and (destination or "").startswith("s3://"):
        bucket, root = parse_s3_uri(str(destination))
        path = urlparse(artifact_uri).path.strip("/")
        return bucket, f"{root}/{path}" if root else path
    raise DemoError(f"The run's artifacts are at {artifact_uri} (server destination {destination}), not in S3: "
                    "is the MLflow server the one `edgeqat stack up` started?")


def locate_models(run: Run, s3_endpoint: str, destination: str | None,
                  env: Mapping[str, str]) -> tuple[tuple[ModelLocation, ...], tuple[str, ...], bool]:
    """The run's ONNX models found in S3, notes on what is missing, and whether everything expected is there."""
    from edgeqat.stack.s3 import (
        botocore_errors,
        credentials_from_env,
        explain_s3_error,
        is_loopback_url,
        make_s3_client,
    )

    info, params = run.info, run.data.params
    bucket, prefix = _artifacts_location(info.artifact_uri, destination)
    client = make_s3_client(s3_endpoint, credentials_from_env(env, allow_local_defaults=is_loopback_url(s3_endpoint)))
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        objects = {o["Key"]: int(o["Size"]) for page in pages for o in page.get("Contents", [])}
    except botocore_errors() as e:
        raise explain_s3_error(e, endpoint_url=s3_endpoint, bucket=bucket, action="list the run's artifacts") from None
    finally:
        client.close()

    models, notes, complete = [], [f"{len(objects)} artifact objects under s3://{bucket}/{prefix}/"], True
    mode = params.get("quant.mode", "?")
    for name, rel in MODEL_FILES:
        key = f"{prefix}/{rel}"
        if key in objects:
            models.append(ModelLocation(name, f"runs:/{info.run_id}/{rel}", f"s3://{bucket}/{key}",
                                        f"{s3_endpoint}/{bucket}/{key}", objects[key]))
        elif name == "int8" and mode == "fp32":
            notes.append("No INT8 model in this run: quantization was off (quant.mode=fp32). For one, add "
                         "quant=qat_int8 to --overrides")
        else:
            complete = False
            notes.append(f"Expected {rel} (quant.mode={mode}) but s3://{bucket}/{prefix}/ has no such object: "
                         "see the run's edgeqat.failure tag and the output above")
    return tuple(models), tuple(notes), complete


def run_demo(options: DemoOptions, *, echo: Echo = print, out: TextIO | None = None) -> DemoResult:
    """Bring the stack up, run the project through ``mlflow run`` against it, and locate the results.

    Args:
        options: home, overrides, experiment, ports, whether to stop the stack at the end.
        echo: where the demo's own lines go; ``out``: where the job's output is streamed (stdout).

    Raises:
        DemoError: no edgeqat project found, or the stack needs a login the environment lacks.
        StackError: the stack cannot start (busy port, missing ``weed`` binary, ...).
    """
    from mlflow.tracking import MlflowClient

    from edgeqat.stack.processes import read_pid_file
    from edgeqat.stack.stack import StackConfig, StackPaths, read_stack_env, stack_down, stack_up

    from edgeqat.deploy.demo_loop import resolve_deploy_port

    project = find_project_dir(options.project_dir)
    deploy_port = resolve_deploy_port(options.home, options.deploy_port)
    info = stack_up(StackConfig(home=options.home, mlflow_port=options.mlflow_port, s3_port=options.s3_port,
                                deploy_port=deploy_port), echo=echo)
    try:
        login = os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if info.auth and not login:
            raise DemoError(
                f"The MLflow server at {info.tracking_uri} requires a login: export MLFLOW_TRACKING_USERNAME="
                f"{info.admin_username} and MLFLOW_TRACKING_PASSWORD=<the password in {info.admin_password_source}>"
            )
        env = job_env(read_stack_env(options.home))
        command = mlflow_run_command(project, options.experiment_name, options.overrides)
        echo(f"Running: mlflow run {project} --env-manager local --experiment-name {options.experiment_name} "
             f"-P overrides={options.overrides!r}  (MLFLOW_TRACKING_URI={info.tracking_uri})")
        returncode, run_id = stream_process(command, env, project, out or sys.stdout)
        if run_id is None:
            return DemoResult(returncode or 1, info.tracking_uri,
                              notes=("`mlflow run` printed no run id: it failed before creating the run (see above)",))
        run = MlflowClient(info.tracking_uri).get_run(run_id)
        exp_id = run.info.experiment_id
        ui_url = f"{info.tracking_uri}/#/experiments/{exp_id}/runs/{run_id}"
        if returncode != 0:
            return DemoResult(returncode, info.tracking_uri, run_id, exp_id, ui_url,
                              notes=(f"The run ended {run.info.status}: see the output above and {ui_url}",))
        _, record = read_pid_file(StackPaths.at(options.home).pid("mlflow"))
        destination = record.info.get("artifacts_destination") if record else None
        models, notes, complete = locate_models(run, info.s3_endpoint_url, destination, env)
        deployed = None
        if complete and options.deploy and run.data.params.get("quant.mode", "fp32") != "fp32":
            from edgeqat.deploy.demo_loop import close_the_loop

            deployed = close_the_loop(options.home, info.tracking_uri, run_id, env, echo=echo,
                                      port=deploy_port)
        return DemoResult(0 if complete else 1, info.tracking_uri, run_id, exp_id, ui_url, models, notes, deployed)
    finally:
        if not options.keep_stack:
            stack_down(options.home, echo=echo)


def report(result: DemoResult, options: DemoOptions, echo: Echo = print) -> None:
    """The lines a newcomer needs after the run: where to click, where the models are."""
    echo("")
    if result.ui_url:
        echo(f"MLflow UI of the run: {result.ui_url}")
    for m in result.models:
        echo(f"{m.name.upper()} model: {m.runs_uri}")
        echo(f"    S3 object: {m.s3_uri} ({m.size_bytes:,} bytes; {m.object_url})")
    for note in result.notes:
        echo(note)
    if result.deployed:
        d = result.deployed
        echo(f"Registered model: {d.model_url}  ({d.model_name} v{d.version}, deploy.local.status={d.verdict})")
        if d.verdict == "deployed":
            echo(f"Running on the local agent {d.seconds_to_agent:.1f} s after the promotion; classify your own "
                 f"images with: edgeqat agent predict IMAGE... --home {options.home}/agent/local")
    home = options.home
    if options.keep_stack:
        echo(f"The stack keeps running (open the UI above); stop it with: edgeqat stack down --home {home}")
    elif result.ui_url:
        echo(f"The stack is stopped; its data stays in {home}: `edgeqat stack up --home {home}` to open the UI again")


def _demo(args: argparse.Namespace) -> int:
    options = DemoOptions(
        home=args.home, overrides=args.overrides, experiment_name=args.experiment_name,
        keep_stack=args.keep_stack, mlflow_port=args.mlflow_port, s3_port=args.s3_port,
        project_dir=args.project_dir, deploy=args.deploy, deploy_port=args.deploy_port,
    )
    result = run_demo(options)
    report(result, options)
    return result.returncode


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``demo`` on the ``edgeqat`` sub-command parsers."""
    demo = subparsers.add_parser(
        "demo", help="stack up + one tracked training via `mlflow run`, then where the run and models are",
        description="Start the local stack (SeaweedFS + MLflow server), run this project with `mlflow run` against "
                    "it, and print the run's MLflow UI URL and where its INT8/FP32 ONNX models are (runs:/ URI and "
                    "S3 object). The stack stays up for the UI unless --down is given.",
    )
    demo.add_argument("--home", type=Path, default=Path(".edgeqat"),
                      help="stack state directory (default: ./.edgeqat, as `edgeqat stack`)")
    demo.add_argument("--overrides", default="", metavar="STR",
                      help="Hydra overrides for the run as one shell-quoted string, "
                           "e.g. 'data=digits trainer.max_epochs=1'")
    demo.add_argument("--experiment-name", default=DEFAULT_EXPERIMENT, metavar="NAME",
                      help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    keep = demo.add_mutually_exclusive_group()
    keep.add_argument("--keep-stack", dest="keep_stack", action="store_true", default=True,
                      help="leave the stack running to open the UI (default)")
    keep.add_argument("--down", dest="keep_stack", action="store_false",
                      help="stop the stack at the end (its data stays under --home)")
    demo.add_argument("--mlflow-port", type=int, metavar="N", help="MLflow port if the stack starts (0: any free)")
    demo.add_argument("--s3-port", type=int, metavar="N", help="S3 port if the stack starts (0: any free)")
    demo.add_argument("--project-dir", type=Path, metavar="DIR",
                      help="the edgeqat checkout to run (default: beside the package, else the current directory)")
    demo.add_argument("--deploy-port", type=int, metavar="N",
                      help="port of the deploy controller if it starts (default 8765; 0: any free)")
    demo.add_argument("--no-deploy", dest="deploy", action="store_false",
                      help="stop after training (default: promote, gate, publish and run it on a local agent)")
    demo.set_defaults(func=_demo)
