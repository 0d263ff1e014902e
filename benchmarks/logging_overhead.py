"""Wall-time overhead of edgeqat's tracking (callbacks + MLflow server logging) vs the same job untracked.

    PYTHONPATH=src python benchmarks/logging_overhead.py [--pairs N] [--epochs E] [--model M]

Both variants run the same job: ``build(cfg)`` (same seed, data split and init), a Lightning trainer
from ``cfg.trainer``, ``fit_and_test``. Lightning's own ``ModelCheckpoint`` (as ``make_trainer``
configures it; ``test`` loads the best checkpoint) is on in both, so what differs is edgeqat's
tracking only:

- ``off``: ``logger=False`` and no other callback.
- ``on``: the training part of ``edgeqat.train.train`` (its ONNX export/verify come after and are
  not training): ``tracked_run`` against a real ``mlflow server`` on 127.0.0.1 (SQLite, local
  artifacts; started once, outside the timings), ``log_run_config``, ``make_trainer``
  (MlflowRunLogger + RunRecorder, DatasetStats, TrainingStatus, CheckpointArtifacts,
  PreemptionCheckpoint, LearningRateMonitor).

The clock covers the whole job, build to the end of ``tracked_run`` (the recorder drained and the
run closed). Per ``trainer.log_every_n_steps`` value (the default 10, and 1 as the worst case) the
variants run in adjacent pairs whose order alternates (off/on, on/off, ...) so that drift from other
load cancels; overhead = (on - off) / off per pair, median over pairs. On a shared machine each pair
first waits (bounded) for the CPU to go idle, and each run records the CPU that other processes took
meanwhile; a pair they disturbed is re-run (``--retries``, the discarded ones are kept in the JSON)
and the summary gives all pairs and the quiet ones apart. Per "on" run the JSON also holds the
server's and the recorder thread's CPU seconds and the operations sent, which explain the overhead.
One untimed warm-up pair first pays the process's one-time costs (imports); ``import mlflow``,
which only the tracked job needs, is measured in a fresh interpreter and reported apart. The
server shares the CPU with training here; a remote server would cost the job less. Writes
``benchmarks/results/logging_overhead.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from _machine import machine_facts
from edgeqat.config import compose_config
from edgeqat.pipeline import fit_and_test, make_checkpoints, make_trainer
from edgeqat.stack.mlflow_server import MlflowServerConfig, start_mlflow_server
from edgeqat.stack.processes import free_port, read_pid_file, stop_server
from edgeqat.tracking import log_run_config, tracked_run
from edgeqat.tracking.system_metrics import system_metrics
from edgeqat.train import build

TARGET_PCT = 3.0  # issue: all callbacks + server logging cost at most 3 % of the job's wall time




@contextlib.contextmanager
def mlflow_server(root: Path):
    """A real ``mlflow server`` (SQLite, local artifacts) as ``edgeqat stack`` and the tests start it."""
    config = MlflowServerConfig(port=free_port(), backend_store_uri=f"sqlite:///{root / 'mlflow.db'}",
                                state_dir=root, artifacts_destination=str(root / "artifacts"))
    pid_path = root / "mlflow.json"
    start_mlflow_server(config, pid_path=pid_path, log_path=root / "mlflow.log", timeout_s=120)
    try:
        yield config.url, read_pid_file(pid_path)[1].pid
    finally:
        stop_server(pid_path)


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (the server and its workers)."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return float("nan")
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def thread_cpu_s(name: str) -> float:
    """CPU seconds of this process's thread called ``name`` (e.g. the RunRecorder's sender)."""
    native = {t.native_id for t in threading.enumerate() if t.name == name}
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in native)


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, all processes)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def wait_quiet(max_wait_s: float, threshold_pct: float) -> float:
    """Wait (up to ``max_wait_s``) until the machine is idle: other jobs' load is what breaks a pair."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait_s:
        if psutil.cpu_percent(interval=2.0) < threshold_pct:
            break
    return round(time.monotonic() - start, 1)


def job_config(args: argparse.Namespace, log_every: int, output_dir: Path, tracking_uri: str) -> DictConfig:
    return compose_config([
        f"model={args.model}", f"data={args.data}",
        *([f"trainer.max_epochs={args.epochs}"] if args.epochs else []),
        f"trainer.log_every_n_steps={log_every}", "trainer.enable_progress_bar=false",  # both variants
        f"output_dir={output_dir}", f"tracking.tracking_uri={tracking_uri}",
        "tracking.experiment_name=logging-overhead", f"seed={args.seed}",
    ])


def run_off(cfg: DictConfig) -> dict[str, Any]:
    """The job with tracking off: same build, trainer settings and checkpointing, no logger."""
    out = Path(cfg.output_dir) / "off"
    checkpoints = make_checkpoints(out / "checkpoints" / "fp32")  # as make_trainer: both variants checkpoint alike
    cpu0, t0 = time.process_time(), time.perf_counter()
    datamodule, module = build(cfg)
    trainer = instantiate(cfg.trainer, max_epochs=cfg.trainer.max_epochs, default_root_dir=str(out),
                          logger=False, callbacks=list(checkpoints))
    t_fit = time.perf_counter()
    fit_and_test(trainer, checkpoints[0], module, datamodule, cfg.ckpt_path)
    t_end = time.perf_counter()
    return {"seconds": t_end - t0, "fit_test_s": t_end - t_fit, "close_s": 0.0,
            "client_cpu_s": time.process_time() - cpu0, "test_acc": _test_acc(trainer)}


def run_on(cfg: DictConfig) -> dict[str, Any]:
    """The FP32 part of ``edgeqat.train.train`` (no export/verify), timed until the run is closed."""
    tc = cfg.tracking
    cpu0, t0 = time.process_time(), time.perf_counter()
    datamodule, module = build(cfg)
    with tracked_run(tc.tracking_uri, tc.experiment_name, cfg.output_dir, tc.run_name, dict(tc.tags),
                     tc.close_timeout_s, tc.batch_window_s) as run, system_metrics(run, enabled=tc.system_metrics):
        log_run_config(run, OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_yaml(cfg, resolve=True),
                       (), dataset=datamodule.name)
        trainer, checkpoint = make_trainer(cfg, run, "fp32", cfg.trainer.max_epochs,
                                           total_epochs=cfg.trainer.max_epochs)
        t_fit = time.perf_counter()
        fit_and_test(trainer, checkpoint, module, datamodule, cfg.ckpt_path)
        t_fit_end = time.perf_counter()
        recorder_cpu = thread_cpu_s("edgeqat-recorder")  # before close() joins it; the drain is ~0.05 s
    t_end = time.perf_counter()
    recorder = run.recorder
    return {"seconds": t_end - t0, "fit_test_s": t_fit_end - t_fit, "close_s": t_end - t_fit_end,
            "client_cpu_s": time.process_time() - cpu0, "recorder_cpu_s": recorder_cpu,
            "test_acc": _test_acc(trainer), "run_id": run.run_id, "metric_points": trainer.logger.logged_points,
            "sent_ops": recorder.sent_ops, "rejected_ops": len(recorder.rejected),
            "spooled": run.spool_path is not None}


def _test_acc(trainer: Any) -> float | None:
    value = trainer.callback_metrics.get("test/acc_fp32")
    return None if value is None else round(float(value), 4)


def timed(variant: str, cfg: DictConfig, server_pid: int) -> dict[str, Any]:
    """One job; ``other_cpu_pct``: CPU that neither the job nor the server used, % of the machine."""
    gc.collect()
    busy0, server0 = busy_cpu_s(), tree_cpu_s(server_pid)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # Lightning's test table
        r = run_off(cfg) if variant == "off" else run_on(cfg)
    server = tree_cpu_s(server_pid) - server0
    other = busy_cpu_s() - busy0 - r["client_cpu_s"] - server
    r |= {"server_cpu_s": server, "other_cpu_pct": max(0.0, 100 * other / (r["seconds"] * psutil.cpu_count())),
          "load_1m": os.getloadavg()[0]}
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}


def mlflow_import_s() -> float:
    """``import mlflow`` (the tracked job's extra import) in a fresh interpreter that has the rest."""
    code = ("import time, edgeqat.train; t = time.perf_counter(); from mlflow.tracking import MlflowClient; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return round(float(out.stdout.strip().splitlines()[-1]), 3)


def check_run(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """What the server holds for a run: proof that the 'on' variant really logged everything."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    artifacts, folders = [], [None]
    while folders:
        for a in client.list_artifacts(run_id, folders.pop()):
            (folders if a.is_dir else artifacts).append(a.path)
    steps = len(client.get_metric_history(run_id, "train/loss"))
    return {"status": run.info.status, "params": len(run.data.params), "metric_keys": len(run.data.metrics),
            "train_loss_points": steps, "artifacts": sorted(artifacts)}


def timed_pair(i: int, n: int, attempt: int, config: Callable[[int, str], DictConfig], server_pid: int,
               args: argparse.Namespace) -> dict[str, Any]:
    """Off and on back to back, off first in even pairs; overhead = (on - off) / off."""
    order = ("off", "on") if i % 2 == 0 else ("on", "off")
    pair: dict[str, Any] = {"order": "/".join(order), "attempt": attempt,
                            "waited_s": wait_quiet(args.quiet_wait, args.quiet_threshold)}
    for variant in order:
        pair[variant] = timed(variant, config(n, f"n{n}-{i}-{attempt}-{variant}"), server_pid)
    pair["overhead_pct"] = round(100 * (pair["on"]["seconds"] - pair["off"]["seconds"]) / pair["off"]["seconds"], 2)
    print(f"log_every_n_steps={n:<3d} pair {i + 1}/{args.pairs}.{attempt} ({pair['order']}): "
          f"off {pair['off']['seconds']:.2f} s, on {pair['on']['seconds']:.2f} s "
          f"(close {pair['on']['close_s']:.2f} s) -> {pair['overhead_pct']:+.2f} %; other jobs "
          f"{pair['off']['other_cpu_pct']:.0f} %/{pair['on']['other_cpu_pct']:.0f} % CPU", flush=True)
    return pair


def is_quiet(pair: dict[str, Any], max_other_pct: float) -> bool:
    return max(pair["off"]["other_cpu_pct"], pair["on"]["other_cpu_pct"]) <= max_other_pct


def summarize(pairs: list[dict[str, Any]], max_other_pct: float) -> dict[str, Any]:
    """Median overhead over all pairs, and over the quiet ones (no other job took CPU during either run)."""
    def stats(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        if not chosen:
            return {"pairs": 0}
        pct = [p["overhead_pct"] for p in chosen]
        off = statistics.median(p["off"]["seconds"] for p in chosen)
        on = statistics.median(p["on"]["seconds"] for p in chosen)
        return {
            "pairs": len(chosen),
            "overhead_pct_median": round(statistics.median(pct), 2),
            "overhead_pct_min": round(min(pct), 2), "overhead_pct_max": round(max(pct), 2),
            "overhead_pct_per_pair": pct,
            "off_seconds_median": round(off, 2), "on_seconds_median": round(on, 2),
            "overhead_pct_of_medians": round(100 * (on - off) / off, 2),
            "close_s_median": round(statistics.median(p["on"]["close_s"] for p in chosen), 3),
            "server_cpu_s_median": round(statistics.median(p["on"]["server_cpu_s"] for p in chosen), 2),
            "recorder_cpu_s_median": round(statistics.median(p["on"]["recorder_cpu_s"] for p in chosen), 2),
            "sent_ops_median": statistics.median(p["on"]["sent_ops"] for p in chosen),
            "meets_target": statistics.median(pct) <= TARGET_PCT,
        }

    quiet = [p for p in pairs if is_quiet(p, max_other_pct)]
    return {"all": stats(pairs), "quiet": stats(quiet)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="timed off/on pairs per log_every_n_steps value")
    parser.add_argument("--epochs", type=int, default=None,
                        help="FP32 epochs; default: the config's trainer.max_epochs, the default job's FP32 phase")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--log-every", type=int, nargs="+", default=[10, 1],
                        help="trainer.log_every_n_steps values (10 is the config default, 1 the worst case)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--quiet-wait", type=float, default=300.0,
                        help="before each pair, wait up to this many seconds for the machine to go idle")
    parser.add_argument("--quiet-threshold", type=float, default=10.0, help="idle: machine CPU below this %%")
    parser.add_argument("--max-other-pct", type=float, default=5.0,
                        help="a pair is quiet if other processes used at most this %% of the machine in both runs")
    parser.add_argument("--retries", type=int, default=2, help="re-run a pair that was not quiet up to this often")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "logging_overhead.json")
    args = parser.parse_args()
    if args.pairs < 1 or args.retries < 0:
        parser.error(f"--pairs {args.pairs} --retries {args.retries}: pass pairs >= 1 and retries >= 0")
    import_s = mlflow_import_s()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(Path(tmp) / "server") as (url, server_pid):
        def config(n: int, label: str) -> DictConfig:
            return job_config(args, n, Path(tmp) / label, url)

        warmup = {}
        if args.warmup:
            for variant in ("off", "on"):
                warmup[variant] = timed(variant, config(args.log_every[0], f"warmup-{variant}"), server_pid)
            print(f"warm-up: off {warmup['off']['seconds']:.1f} s, on {warmup['on']['seconds']:.1f} s", flush=True)
        pairs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.log_every}
        discarded: dict[int, list[dict[str, Any]]] = {n: [] for n in args.log_every}
        for i in range(args.pairs):
            for n in args.log_every:
                for attempt in range(1 + args.retries):
                    pair = timed_pair(i, n, attempt, config, server_pid, args)
                    if is_quiet(pair, args.max_other_pct) or attempt == args.retries:
                        break
                    discarded[n].append(pair)  # another job took the CPU: the difference is its noise
                pairs[n].append(pair)
        last_on = pairs[args.log_every[-1]][-1]["on"]
        server_check = check_run(url, last_on["run_id"])

    summary = {str(n): summarize(p, args.max_other_pct) for n, p in pairs.items()}
    cfg = job_config(args, args.log_every[0], Path("/tmp/run"), "http://127.0.0.1:0")
    args.epochs = cfg.trainer.max_epochs
    meta = {
        **machine_facts(), "model": args.model, "data": args.data, "epochs": args.epochs,
        "seed": args.seed, "log_every_n_steps": args.log_every, "pairs": args.pairs,
        "quiet_wait_s": args.quiet_wait, "quiet_threshold_pct": args.quiet_threshold,
        "max_other_pct": args.max_other_pct, "retries": args.retries,
        "target_pct": TARGET_PCT,
        "method": ("whole job (build -> fit/test -> run closed) timed; off/on in adjacent pairs, order "
                   "alternating per pair, one process; overhead = (on - off) / off per pair, median over pairs"),
        "off": "logger=False, callbacks=[the best/last ModelCheckpoints as make_trainer builds them]",
        "on": "tracked_run + log_run_config + make_trainer (all edgeqat callbacks, MlflowRunLogger, RunRecorder)",
        "server": "mlflow server on 127.0.0.1 (SQLite, local artifacts), same machine, 1 worker",
        "mlflow_import_s": import_s, "total_minutes": round((time.time() - started) / 60, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    result = {"meta": meta, "summary": summary, "warmup": warmup,
              "pairs": {str(n): p for n, p in pairs.items()},
              "discarded_pairs": {str(n): p for n, p in discarded.items()}, "server_check": server_check}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    parts = []
    for n, s in summary.items():
        q = s["quiet"] if s["quiet"]["pairs"] else s["all"]
        parts.append(f"log_every_n_steps={n}: {q['overhead_pct_median']:+.2f} % [{q['overhead_pct_min']:+.2f}, "
                     f"{q['overhead_pct_max']:+.2f}] over {q['pairs']} "
                     f"{'quiet' if s['quiet']['pairs'] else 'CONTENDED'} pairs "
                     f"(off {q['off_seconds_median']:.1f} s, on {q['on_seconds_median']:.1f} s)")
    print(f"logging overhead ({args.model}, {args.epochs} ep, {torch.get_num_threads()} threads, "
          f"target <= {TARGET_PCT} %): " + "; ".join(parts))


if __name__ == "__main__":
    main()
