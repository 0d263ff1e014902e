"""Coverage of timm's CNN families: the smallest variant of each through the whole INT8 path.

    python benchmarks/model_coverage.py [--families resnet dla ...] [--image-size 32]

For each family in ``edgeqat.pipeline.coverage.FAMILIES``: build, a few FP32 steps, prepare for
QAT, a few QAT steps, convert, export, the ORT-optimized graph, the integer-kernel check and top-1
agreement of ONNX Runtime with the integer reference on random inputs (``check_model``). Each model
runs in its own process, so one that crashes or exhausts memory costs its row, not the table.
Writes ``results/model_coverage.json`` (rows + machine facts) and prints the README's table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _machine import machine_facts

from edgeqat.pipeline.coverage import FAMILIES

RESULTS = Path(__file__).parent / "results"


def check_in_subprocess(family: str, model: str, image_size: int, timeout_s: float) -> dict:
    """``check_model`` in a fresh interpreter; a crash or a timeout becomes a failed row naming it."""
    code = ("import json, tempfile; from edgeqat.pipeline.coverage import CoverageSettings, check_model\n"
            "with tempfile.TemporaryDirectory() as d:\n"
            f"    r = check_model({model!r}, {family!r}, workdir=d, settings=CoverageSettings(image_size={image_size}))\n"
            "print('RESULT ' + json.dumps(r.to_dict()))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"family": family, "model": model, "passed": False, "stage": "timeout",
                "reason": f"no result within {timeout_s:.0f} s", "seconds": timeout_s}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"family": family, "model": model, "passed": False, "stage": "crash",
            "reason": f"exit {proc.returncode}: {tail[:300]}", "seconds": None}


def table(rows: list[dict]) -> str:
    lines = ["| family | model | params (M) | result | QLinearConv / float conv / float nodes | within 1 step, max drift | "
             "top-1 agreement | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        convs = f"{r.get('qlinearconv', 0)} / {r.get('float_conv', 0)} / {r.get('float_nodes', 0)}"
        drift = ("" if r.get("within_step_fraction") is None else
                 f"{r['within_step_fraction']:.0%}, {r['max_step_drift']:.0f}")
        agree = "" if r.get("top1_agreement") is None else f"{r['top1_agreement']:.0%}"
        result = "pass" if r["passed"] else f"**fails at {r['stage']}**: {r['reason']}"
        lines.append(f"| {r['family']} | `{r['model']}` | {r.get('params_m') or ''} | {result} | {convs} | {drift} | "
                     f"{agree} | {r.get('seconds') or ''} |")
    passed = sum(r["passed"] for r in rows)
    lines.append(f"\n{passed} of {len(rows)} families pass ({passed / len(rows):.0%}).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=sorted(FAMILIES), metavar="FAMILY")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    parser.add_argument("--out", default=str(RESULTS / "model_coverage.json"))
    parser.add_argument("--update", action="store_true",
                        help="re-check only --families and replace their rows in --out, keeping the others")
    args = parser.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if args.update and out.exists() else []
    for family in args.families:
        row = check_in_subprocess(family, FAMILIES[family], args.image_size, args.timeout)
        rows = [r for r in rows if r["family"] != family] + [row]
        rows.sort(key=lambda r: list(FAMILIES).index(r["family"]) if r["family"] in FAMILIES else len(FAMILIES))
        print(json.dumps(row), flush=True)
        # Written after every family: a long run stopped half way keeps what it measured.
        out.write_text(json.dumps({"machine": machine_facts(), "image_size": args.image_size, "rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
