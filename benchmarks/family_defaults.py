"""``edgeqat train model=<family>`` with no other override: does each family's own recipe train well?

    python benchmarks/family_defaults.py [--models resnet18 ...] [--seed 42]

Each model config carries its family's FP32 recipe (``conf/model/<m>.yaml``). This runs the product
exactly as a new user would (the default job: ``quant=qat_int8``, ``data=mnist5k``; only the store,
the experiment name and the progress bar are set) and compares ``test/acc_fp32`` with the README's
QAT-vs-PTQ table, read from ``results/qat_accuracy.json`` (the mean over its seeds). Target: within
1 pt. Writes ``results/family_defaults.json`` with the wall time of each job and the machine facts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _machine import machine_facts
from qat_accuracy import MODELS, run_model

RESULTS = Path(__file__).parent / "results"
TOLERANCE = 0.01  # the "within 1 pt"


def readme_figures() -> dict[str, float]:
    """FP32 test accuracy per model in the README's table (means over seeds, ``qat_accuracy.py``)."""
    rows = json.loads((RESULTS / "qat_accuracy.json").read_text())["rows"]
    return {r["model"]: r["test/acc_fp32_mean"] for r in rows if "test/acc_fp32_mean" in r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seed", type=int, default=42, help="the default job's own seed")
    parser.add_argument("--out", default=str(RESULTS / "family_defaults.json"))
    args = parser.parse_args()
    reference, rows = readme_figures(), []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            run = run_model(model, args.seed, [], Path(tmp), quant=None)
            fp32, ref = run.get("test/acc_fp32"), reference.get(model)
            run["readme_fp32"] = ref
            run["within_1pt"] = None if fp32 is None or ref is None else fp32 >= ref - TOLERANCE
            rows.append(run)
            print(json.dumps(run), flush=True)
            Path(args.out).write_text(json.dumps({"machine": machine_facts(), "command": "edgeqat train model=<m>",
                                                  "tolerance": TOLERANCE, "runs": rows}, indent=1))
    print("| `edgeqat train model=...` | FP32 (README) | INT8 in ORT | within 1 pt | wall time |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | error: {r['error']} | | | {r['seconds']:.0f} s |")
            continue
        print(f"| {r['model']} | {r['test/acc_fp32']:.3f} ({r['readme_fp32']:.3f}) | {r['test/acc_int8']:.3f} | "
              f"{'yes' if r['within_1pt'] else 'NO'} | {r['seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
