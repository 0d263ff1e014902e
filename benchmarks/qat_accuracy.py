"""QAT vs PTQ vs FP32 accuracy for the four families, on real data (MNIST-5k by default, ``--extra data=...``).

    python benchmarks/qat_accuracy.py [--models resnet18 ...] [--seeds 42 0 1] [--extra "trainer.max_epochs=6"]
    python benchmarks/qat_accuracy.py --weight-ranges int8 int7     # the cost of 7-bit weights, per family
    python benchmarks/qat_accuracy.py --extra "data=fashion_mnist data.max_train_samples=5000" --seeds 42 0 1 \
        --store /tmp/acc --out results/qat_accuracy_fashion_mnist.json     # the README's Fashion-MNIST table
    python benchmarks/qat_accuracy.py --fallback 0.005 --out results/qat_accuracy_fashion_mnist.json  # + PTQ fallback
    python benchmarks/qat_accuracy.py --fallback 0.0025 --ptq-drop-over 0.005 --label margin ...  # the same, aimed lower
    python benchmarks/qat_accuracy.py --fallback 0.005 --ptq-drop-over 0.005 --label wide --extra \
        "quant.sensitivity_images=null data.extra_val_samples=18000 quant.fallback.target_z=1.64" ...  # README's
    python benchmarks/qat_accuracy.py --fallback ... --models mobilenetv3_small_100 --seeds 1  # redo one, keep the rest

Runs the product itself (``edgeqat train experiment=compare model=<m> seed=<s>``, one subprocess per
run) into a throw-away SQLite store, then collects the verified numbers: FP32 accuracy (torch), QAT
fake-quant accuracy (torch), INT8 accuracy of the exported file in ONNX Runtime, the PTQ baseline,
torch-vs-ORT top-1 agreement, sizes and kernels. Writes ``benchmarks/results/qat_accuracy.json``.

The seed sets the data split (a different 1,000-image test set), the initial weights and the batch
order. QAT and PTQ in one run quantize the same FP32 model, so each run gives one paired QAT - PTQ
difference; on MNIST these are a few test images either way, so the check uses their mean over the
seeds. Issue targets: agreement >= 99 %, acc_drop <= 0.5 pt, QAT >= PTQ, INT8/FP32 size <= 0.27
(resnet18) or <= 0.36 (depthwise nets).

``--fallback 0.005 --store DIR`` then quantizes, with no training, each run's own FP32 checkpoint
with ORT's PTQ again where PTQ lost more than 0.5 pt, this time with the sensitivity report and the
float fallback (``quant.float_scope=layer``, ``quant.fallback.max_drop=0.005``): the drop before
and after on the test split, the layers and activations kept float and the latency they cost
(``fallback_rows``); ``--retime`` times each fallback file against its PTQ file and the FP32 file, idle.

``--weight-ranges int8 int7`` trains the FP32 model once per model and seed (``quant=fp32``) and
quantizes that same checkpoint once per ``quant.weight_range`` (QAT and PTQ, ``quant.init_checkpoint``),
so the int7 - int8 differences are paired too; the drift columns show which range this CPU computes
exactly (results in ``results/weight_range_accuracy.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import statistics
import time
from pathlib import Path

from _machine import machine_facts

MODELS = ["resnet18", "mobilenetv3_small_100", "efficientnet_lite0", "shufflenet_v2_x0_5"]
# Each family's FP32 recipe is its model config's (conf/model/<m>.yaml: resnet18 AdamW 4 epochs, the
# depthwise nets SGD + Nesterov 20 epochs), so `edgeqat train model=<m>` alone trains what this measures.
KEYS = ["test/acc_fp32", "test/acc_qat", "test/acc_int8", "test/acc_ptq", "int8/acc_drop", "int8/top1_agreement",
        "int8/max_step_drift", "int8/within_step_fraction", "int8/fake_quant_max_step_drift", "int8/fake_quant_agreement",
        "int8/size_ratio", "int8/qlinearconv", "int8/float_conv", "int8/speedup_224",
        "ptq/speedup_224"]
SIZE_TARGET = {"resnet18": 0.27}


def run_model(model: str, seed: int, extra: list[str], store: Path, tag: str = "",
              quant: str | None = "experiment=compare", keys: list[str] = KEYS) -> dict:
    """``edgeqat train <quant> model=<model> seed=<seed> <extra>`` into ``store``; its metrics (or its error)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    experiment = f"acc-{model}-{seed}{tag}"
    args = [*([quant] if quant else []), f"model={model}", f"seed={seed}", "trainer.enable_progress_bar=false",
            f"tracking.experiment_name={experiment}", f"output_dir={store / 'outputs'}", *extra]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeqat", "train", *args], env=env, cwd=store,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"model": model, "seed": seed, "error": proc.stderr.strip().splitlines()[-1], "seconds": seconds}
    client = MlflowClient(uri)
    # the newest: a benchmark stopped half way may have left an unfinished run in the same experiment
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                order_by=["attributes.start_time DESC"], max_results=1)
    m = run.data.metrics
    return {"model": model, "seed": seed, "overrides": args, "run_id": run.info.run_id, "seconds": round(seconds, 1),
            **{k: round(m[k], 4) for k in keys if k in m}}


def run_weight_ranges(model: str, seed: int, ranges: list[str], extra: list[str], store: Path) -> list[dict]:
    """One FP32 model, quantized (QAT + PTQ) once per ``quant.weight_range``: paired differences."""
    fp32 = run_model(model, seed, extra, store, tag="-fp32", quant="quant=fp32")
    if "error" in fp32:
        return [{**fp32, "weight_range": r} for r in ranges]
    init = f"quant.init_checkpoint=runs:/{fp32['run_id']}/checkpoints/fp32/best.ckpt"
    return [{**run_model(model, seed, [init, f"quant.weight_range={r}", *extra], store, tag=f"-{r}"),
             "weight_range": r, "fp32_seconds": fp32["seconds"]} for r in ranges]


def summarize_ranges(model: str, runs: list[dict], ranges: list[str]) -> dict:
    """Per weight range: QAT and PTQ accuracy, drift and agreement; differences against the first range."""
    ok = [r for r in runs if "error" not in r]
    row: dict = {"model": model, "seeds": sorted({r["seed"] for r in ok})}
    for wr in ranges:
        mine = [r for r in ok if r["weight_range"] == wr]
        if not mine:
            row[wr] = {"error": "every run failed"}
            continue
        row[wr] = {k: round(statistics.fmean(r[k] for r in mine), 4) for k in
                   ("test/acc_fp32", "test/acc_int8", "test/acc_ptq", "int8/top1_agreement") if all(k in r for r in mine)}
        row[wr]["max_step_drift"] = max(r.get("int8/max_step_drift", float("nan")) for r in mine)
        row[wr]["agreement_min"] = min(r["int8/top1_agreement"] for r in mine)
    base = ranges[0]
    for wr in ranges[1:]:
        if "error" not in row[wr] and "error" not in row[base]:
            row[f"{wr}-{base}"] = {k: round(row[wr][k] - row[base][k], 4) for k in ("test/acc_int8", "test/acc_ptq")}
    return row


def summarize(model: str, runs: list[dict]) -> dict:
    """Means over the seeds and the paired QAT - PTQ differences; the issue's checks on the means."""
    runs = [r for r in runs if "error" not in r]
    if not runs:
        return {"model": model, "error": "every run failed"}

    def mean(key: str) -> float:
        return round(statistics.fmean(r[key] for r in runs), 4)

    diffs = [round(r["test/acc_int8"] - r["test/acc_ptq"], 4) for r in runs]
    row = {"model": model, "seeds": [r["seed"] for r in runs], **{f"{k}_mean": mean(k) for k in
           ("test/acc_fp32", "test/acc_int8", "test/acc_ptq", "int8/acc_drop")},
           "qat_minus_ptq": diffs, "qat_minus_ptq_mean": round(statistics.fmean(diffs), 4),
           "qat_minus_ptq_sd": round(statistics.stdev(diffs), 4) if len(diffs) > 1 else None,
           "int8_drop": [round(r["int8/acc_drop"], 4) for r in runs],
           "ptq_drop": [round(r["test/acc_fp32"] - r["test/acc_ptq"], 4) for r in runs],
           "seconds": [r["seconds"] for r in runs],
           "agreement_min": min(r["int8/top1_agreement"] for r in runs),
           "size_ratio": max(r["int8/size_ratio"] for r in runs)}
    size_target = SIZE_TARGET.get(model, 0.36)
    row["checks"] = {
        "agreement>=0.99": row["agreement_min"] >= 0.99,
        "acc_drop<=0.005": row["int8/acc_drop_mean"] <= 0.005,
        "qat>=ptq": row["qat_minus_ptq_mean"] >= 0,
        f"size_ratio<={size_target}": row["size_ratio"] <= size_target,
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="one run per model and seed (default 42; with --fallback: every seed measured)")
    parser.add_argument("--extra", default="", help="extra overrides for every model, space separated")
    parser.add_argument("--weight-ranges", nargs="+", default=None,
                        help="quantize one FP32 model per seed once per quant.weight_range (e.g. int8 int7)")
    parser.add_argument("--out", default=None, help="default: results/qat_accuracy.json (or weight_range_accuracy.json)")
    parser.add_argument("--store", default=None,
                        help="keep the runs' MLflow store here (default: a temporary folder, removed at the end); "
                             "--fallback reads the FP32 checkpoints from it")
    parser.add_argument("--append", action="store_true", help="keep the runs already in --out that this call does not redo (other models, other seeds)")
    parser.add_argument("--fallback", type=float, default=None, metavar="MAX_DROP",
                        help="no training: PTQ + float fallback (quant.fallback.max_drop) from the FP32 checkpoints of "
                             "the runs in --out (kept with --store) where PTQ lost more than MAX_DROP")
    parser.add_argument("--scope", default="layer", help="quant.float_scope of the fallback runs")
    parser.add_argument("--label", default="", help="with --fallback: keep these runs as fallback_runs_<label>, "
                                                    "beside the ones of another setting")
    parser.add_argument("--ptq-drop-over", type=float, default=None, metavar="DROP",
                        help="with --fallback: the runs whose PTQ lost more than DROP (default: MAX_DROP)")
    parser.add_argument("--retime", action="store_true",
                        help="with --fallback: time each fallback file against the file before it, side by side "
                             "(run it on an idle machine)")
    args = parser.parse_args()
    if args.weight_ranges:
        args.seeds = args.seeds or [42]
        return main_weight_ranges(args)
    if args.fallback is not None:
        return main_fallback(args)
    args.seeds = args.seeds or [42]
    args.out = args.out or str(Path(__file__).parent / "results" / "qat_accuracy.json")
    runs, rows, earlier = [], [], {}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.append and Path(args.out).exists():  # (model, seed) pairs measured earlier stay, and the fallbacks
        earlier = json.loads(Path(args.out).read_text())
        rerun = {(m, s) for m in args.models for s in args.seeds}
        runs = [r for r in earlier["runs"] if (r["model"], r["seed"]) not in rerun]
    with _store(args.store) as store:
        for model in args.models:
            for seed in args.seeds:
                runs.append(run_model(model, seed, args.extra.split(), store))
                print(json.dumps(runs[-1]), flush=True)
            models = dict.fromkeys(r["model"] for r in runs)
            rows = [summarize(m, [r for r in runs if r["model"] == m]) for m in models]
            # Written after every model: a long benchmark stopped half way keeps what it measured.
            Path(args.out).write_text(json.dumps({**earlier, "machine": machine_facts(), "store": args.store,
                                                  "config": f"experiment=compare {args.extra or 'data=mnist5k'}",
                                                  "rows": rows, "runs": runs}, indent=1))
    print(f"Means over seeds {args.seeds}; QAT - PTQ per seed in accuracy points.")
    print("| model | FP32 | INT8 (ORT) | PTQ (ORT) | drop | QAT - PTQ | min agreement | size ratio | checks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | error: {r['error']} |")
            continue
        ok = "all pass" if all(r["checks"].values()) else ", ".join(k for k, v in r["checks"].items() if not v)
        per_seed = ", ".join(f"{d * 100:+.1f}" for d in r["qat_minus_ptq"])
        print(f"| {r['model']} | {r['test/acc_fp32_mean']:.4f} | {r['test/acc_int8_mean']:.4f} | "
              f"{r['test/acc_ptq_mean']:.4f} | {r['int8/acc_drop_mean']:+.4f} | {per_seed} | "
              f"{r['agreement_min']:.4f} | {r['size_ratio']:.3f} | {ok} |")


FALLBACK_KEYS = ["test/acc_fp32", "test/acc_int8", "int8/speedup_224", "fallback/val_acc_before",
                 "fallback/val_acc_after", "fallback/val_acc_after_bound", "fallback/layers", "fallback/activations",
                 "fallback/met",
                 "fallback/extra_latency_pct", "fallback/latency_ms_before", "fallback/latency_ms_after",
                 "sensitivity/top_recovered", "int8/float_conv"]


_OWN_OVERRIDES = ("experiment=", "model=", "seed=", "trainer.enable_progress_bar=", "tracking.experiment_name=",
                  "output_dir=")


def run_fallbacks(result: dict, extra: list[str], store: Path, max_drop: float, scope: str,
                  ptq_drop_over: float | None = None) -> list[dict]:
    """PTQ + fallback from each compare run's own FP32 checkpoint where ORT's PTQ lost more than
    ``ptq_drop_over`` (default ``max_drop``).

    ``quant=ptq_int8`` on the same checkpoint (``quant.init_checkpoint``, no FP32 epochs) makes the same
    PTQ file as the compare run's baseline, so before/after is paired; the layers are chosen on the
    validation split and the test split judges the file.
    """
    out = []
    for run in result["runs"]:
        if "error" in run or run["test/acc_fp32"] - run["test/acc_ptq"] <= (ptq_drop_over or max_drop):
            continue
        init = f"quant.init_checkpoint=runs:/{run['run_id']}/checkpoints/fp32/best.ckpt"
        # the compare run's own data overrides (run_model adds model, seed and where to log)
        same = [o for o in run["overrides"] if not o.startswith(_OWN_OVERRIDES)]
        got = run_model(run["model"], run["seed"], [*same, init, "quant.sensitivity=true", f"quant.float_scope={scope}",
                                                    f"quant.fallback.max_drop={max_drop}", *extra],
                        store, tag="-fallback", quant="quant=ptq_int8", keys=FALLBACK_KEYS)
        got.update({"compare_run_id": run["run_id"], "acc_fp32_compare": run["test/acc_fp32"],
                    "acc_ptq": run["test/acc_ptq"], "ptq_speedup_224": run.get("ptq/speedup_224")})
        print(json.dumps(got), flush=True)
        out.append(got)
    return out


def summarize_fallbacks(runs: list[dict]) -> list[dict]:
    """Per model: PTQ drop before and after the fallback (test split), layers kept float, latency cost."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model and "error" not in r]
        if not mine:
            rows.append({"model": model, "error": "every fallback run failed"})
            continue
        rows.append({
            "model": model, "seeds": [r["seed"] for r in mine],
            "ptq_drop": [round(r["test/acc_fp32"] - r["acc_ptq"], 4) for r in mine],
            "fallback_drop": [round(r["test/acc_fp32"] - r["test/acc_int8"], 4) for r in mine],
            "layers": [int(r["fallback/layers"]) for r in mine],
            "activations": [int(r.get("fallback/activations", 0)) for r in mine],
            "met_on_val": [bool(r["fallback/met"]) for r in mine],
            "extra_latency_pct": [round(r["fallback/extra_latency_pct"], 1) for r in mine],
            "speedup_224": [r.get("int8/speedup_224") for r in mine],
            "retimed_extra_pct_32": [r.get("retimed_extra_pct_32") for r in mine],
            "retimed_extra_pct_224": [r.get("retimed_extra_pct_224") for r in mine],
            "retimed_speedup_vs_fp32_224": [r.get("retimed_speedup_vs_fp32_224") for r in mine],
            "ptq_speedup_224": [r.get("ptq_speedup_224") for r in mine],
        })
    return rows


@contextlib.contextmanager
def _store(path: str | None):
    """The benchmark's MLflow store: ``path`` kept (created if needed), or a temporary folder."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path).resolve()
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def retime_fallbacks(result: dict, store: Path, key: str = "fallback_runs", rounds: int = 7, iters: int = 30) -> None:
    """Each fallback file against the PTQ file before it and the FP32 file, side by side on this (idle) machine.

    The run's own ``fallback/extra_latency_pct`` was timed while other work shared the CPU; here the
    three files alternate, ``rounds`` times ``iters`` batch-1 runs each on 1 thread, at the trained
    resolution and at 224 px, and the medians are compared: the fallback's extra latency over the
    PTQ file, and its speed-up over FP32 (what a user decides on: below 1, FP32 is the faster file).
    """
    from mlflow.tracking import MlflowClient

    from edgeqat.quant.verify import measure_latency_ms

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    for run in result.get(key, []):
        if "error" in run or not (run.get("fallback/layers") or run.get("fallback/activations")):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            files = {name: client.download_artifacts(run["run_id"], f"{name}/model.onnx", f"{tmp}/{name}")
                     for name in ("int8_before_fallback", "int8", "fp32")}
            import onnx

            graph_input = onnx.load(files["int8"], load_external_data=False).graph.input[0]
            channels = graph_input.type.tensor_type.shape.dim[1].dim_value
            for size in (32, 224):
                times: dict[str, list[float]] = {name: [] for name in files}
                for _ in range(rounds):
                    for name, path in files.items():
                        times[name].append(measure_latency_ms(path, (1, channels, size, size), iters=iters))
                before, after, fp32 = (statistics.median(times[n]) for n in ("int8_before_fallback", "int8", "fp32"))
                run[f"retimed_ms_{size}"] = [round(before, 4), round(after, 4), round(fp32, 4)]
                run[f"retimed_extra_pct_{size}"] = round((after / before - 1) * 100, 1)
                run[f"retimed_speedup_vs_fp32_{size}"] = [round(fp32 / before, 2), round(fp32 / after, 2)]
        print(run["model"], run["seed"], {k: v for k, v in run.items() if k.startswith("retimed")}, flush=True)


def main_fallback(args: argparse.Namespace) -> None:
    out = Path(args.out or Path(__file__).parent / "results" / "qat_accuracy.json")
    result = json.loads(out.read_text())
    store = Path(args.store or result.get("store") or "")
    if not (store / "mlflow.db").is_file():
        sys.exit(f"--fallback needs the store the compare runs were kept in (--store): no {store / 'mlflow.db'}")
    suffix = f"_{args.label}" if args.label else ""  # another setting's runs, kept beside the first
    runs_key, rows_key = f"fallback_runs{suffix}", f"fallback_rows{suffix}"
    if args.retime:
        retime_fallbacks(result, store, runs_key)
        result["retime_machine"] = machine_facts()
    else:
        result[f"fallback_config{suffix}"] = {"max_drop": args.fallback, "scope": args.scope, "extra": args.extra}

        def redo(r: dict) -> bool:
            return r["model"] in args.models and (args.seeds is None or r["seed"] in args.seeds)

        kept = [r for r in result.get(runs_key, []) if not redo(r)]  # other models' and seeds' fallbacks stay
        new = run_fallbacks({**result, "runs": [r for r in result["runs"] if redo(r)]}, args.extra.split(), store,
                            args.fallback, args.scope, args.ptq_drop_over)
        order = {(r["model"], r["seed"]): i for i, r in enumerate(result["runs"])}  # the compare runs' order
        result[runs_key] = sorted(kept + new, key=lambda r: order.get((r["model"], r["seed"]), len(order)))
    result[rows_key] = summarize_fallbacks(result[runs_key])
    out.write_text(json.dumps(result, indent=1))
    print("| model | PTQ drop (per seed) | PTQ + fallback drop | layers float | activations unrounded | "
          "extra latency (batch 1) | met on val |")
    print("|---|---|---|---|---|---|---|")
    for r in result[rows_key]:
        if "error" in r:
            print(f"| {r['model']} | error: {r['error']} |")
            continue
        pts = lambda xs: ", ".join(f"{x * 100:+.2f}" for x in xs)  # noqa: E731
        print(f"| {r['model']} | {pts(r['ptq_drop'])} | {pts(r['fallback_drop'])} | {r['layers']} | {r['activations']} | "
              f"{', '.join(f'{x:+.1f} %' for x in r['extra_latency_pct'])} | {r['met_on_val']} |")


def main_weight_ranges(args: argparse.Namespace) -> None:
    out = Path(args.out or Path(__file__).parent / "results" / "weight_range_accuracy.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            model_runs = []
            for seed in args.seeds:
                for r in run_weight_ranges(model, seed, args.weight_ranges, args.extra.split(), Path(tmp)):
                    model_runs.append(r)
                    print(json.dumps(r), flush=True)
            runs += model_runs
            rows.append(summarize_ranges(model, model_runs, args.weight_ranges))
            # Written after every model: a long benchmark stopped half way keeps what it measured.
            out.write_text(json.dumps({"machine": machine_facts(), "weight_ranges": args.weight_ranges,
                                       "config": "experiment=compare data=mnist5k, one FP32 checkpoint per model "
                                                 "and seed " + args.extra, "rows": rows, "runs": runs}, indent=1))
    head = " | ".join(f"{wr} QAT / PTQ (max drift, min agreement)" for wr in args.weight_ranges)
    print(f"| model | FP32 | {head} |")
    for r in rows:
        cells = []
        for wr in args.weight_ranges:
            c = r[wr]
            cells.append("error" if "error" in c else f"{c['test/acc_int8']:.4f} / {c['test/acc_ptq']:.4f} "
                         f"({c['max_step_drift']:.1f}, {c['agreement_min']:.4f})")
        fp32 = r[args.weight_ranges[0]].get("test/acc_fp32", float("nan"))
        print(f"| {r['model']} | {fp32:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
