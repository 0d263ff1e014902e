"""Promotion -> model running on the agent: seconds, by webhook and by poll, on the real local stack.

    PYTHONPATH=src python benchmarks/deploy_latency.py [--promotions 5] [--poll-interval 10]

Starts its own stack (``stack_up`` in a temporary home: SeaweedFS + MLflow server, the registry
webhook registered as ``edgeqat stack up`` does), trains one tiny model (digits 16 px, resnet18,
QAT) so there is a registered version with a run to rebuild the evaluation split from, then starts
``edgeqat deploy serve`` and ``edgeqat agent`` (``--interval 1``) as processes. Each promotion is a
*new* version (same LoggedModel, so the gate runs every time: a version gated once would only be
republished) set to alias ``production``; the clock runs from the alias call to the agent's
``active.json`` naming that version: gate (download, sha256, accuracy on the test split, 50
latency runs), publish, signed manifest, agent poll, download, verify, smoke inference, swap.

- webhook path: the controller's poller is off (``--poll-interval 3600``);
- poll path: the webhook is disabled on the server, the controller polls every ``--poll-interval``
  seconds (so about half of it is waiting, on average).

Target: <= 10 s by webhook. Writes ``benchmarks/results/deploy_latency.json`` with the machine facts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_facts
from edgeqat.config import compose_config
from edgeqat.deploy.demo_loop import active_version, ensure_controller
from edgeqat.stack.processes import free_port, stop_server
from edgeqat.stack.s3 import with_local_s3_keys
from edgeqat.stack.stack import StackConfig, StackPaths, read_stack_env, stack_down, stack_up
from edgeqat.stack.webhook import WEBHOOK_NAME
from edgeqat.train import train

MODEL = "bench-deploy-int8"
JOB = ["data=digits", "data.image_size=16", "model=resnet18", "model.name=test_resnet", "quant=qat_int8",
       "quant.qat_epochs=1", "trainer.max_epochs=2", "quant.benchmark_resolutions=[]", "quant.latency_iters=5",
       "trainer.enable_progress_bar=false", "tracking.experiment_name=bench-deploy", f"registry.model_name={MODEL}"]


def _promote_and_time(client, source: str, run_id: str, tags: dict[str, str], agent_home: Path,
                      timeout_s: float = 300) -> float:
    mv = client.create_model_version(MODEL, source, run_id, tags=tags, model_id=source.removeprefix("models:/"))
    t0 = time.perf_counter()
    client.set_registered_model_alias(MODEL, "production", mv.version)
    while time.perf_counter() - t0 < timeout_s:
        if active_version(agent_home) == mv.version:
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise RuntimeError(f"v{mv.version} did not reach the agent in {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotions", type=int, default=5)
    parser.add_argument("--poll-interval", type=float, default=10.0)
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    home = Path(tempfile.mkdtemp(prefix="edgeqat-bench-deploy-"))
    port = free_port()
    procs: list[subprocess.Popen] = []
    try:
        info = stack_up(StackConfig(home=home, mlflow_port=0, s3_port=0, deploy_port=port), echo=lambda _: None)
        env = with_local_s3_keys({**os.environ, **read_stack_env(home), "PYTHONUNBUFFERED": "1"})
        os.environ.update({k: env[k] for k in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        result = train(compose_config([*JOB, f"tracking.tracking_uri={info.tracking_uri}", f"output_dir={home}/out"]))
        client = MlflowClient(info.tracking_uri)
        v1 = client.get_model_version(MODEL, result.model_version.split("/")[1])
        tags = {k: v for k, v in v1.tags.items() if not k.startswith("deploy.")}
        ensure_controller(home, env, port, poll_interval_s=3600)
        agent_home = home / "agent" / "local"
        procs.append(subprocess.Popen([sys.executable, "-m", "edgeqat", "agent", "--home", str(agent_home),
                                       "--public-key", str(home / "deploy_signing_key.pub"), "--interval", "1"],
                                      env=env, start_new_session=True, stdout=open(home / "agent.log", "w"),
                                      stderr=subprocess.STDOUT))
        webhook = [_promote_and_time(client, v1.source, v1.run_id, tags, agent_home) for _ in range(args.promotions)]
        stop_server(StackPaths.at(home).pid("deploy"))
        hook = next(w for w in client.list_webhooks() if w.name == WEBHOOK_NAME)
        client.update_webhook(hook.webhook_id, status="DISABLED")
        ensure_controller(home, env, port, poll_interval_s=args.poll_interval)
        poll = [_promote_and_time(client, v1.source, v1.run_id, tags, agent_home) for _ in range(args.promotions)]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)
        stack_down(home, echo=lambda _: None)  # the controller too

    summary = {path: {"median_s": statistics.median(xs), "worst_s": max(xs), "runs_s": xs}
               for path, xs in (("webhook", webhook), ("poll", poll))}
    out = {"machine": machine_facts(), "promotions": args.promotions, "poll_interval_s": args.poll_interval,
           "agent_interval_s": 1.0, "gate_latency_iters": 50, "target_webhook_s": 10.0, **summary}
    path = Path(__file__).parent / "results" / "deploy_latency.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"alias -> agent: webhook median {summary['webhook']['median_s']:.1f} s, worst "
          f"{summary['webhook']['worst_s']:.1f} s (target <= 10 s); poll every {args.poll_interval:g} s: median "
          f"{summary['poll']['median_s']:.1f} s, worst {summary['poll']['worst_s']:.1f} s  -> {path}")


if __name__ == "__main__":
    main()
