"""How fast the CLI answers: wall time of ``python -m edgeqat <...> --help`` in a fresh interpreter.

    python benchmarks/cli_startup.py [--runs 10]

Each command runs ``--runs`` times in a new process; the median is the figure (target: under 1 s),
next to a bare ``python -c pass`` as the floor no CLI can go below. ``tests/unit/test_cli_imports.py``
holds the cause (no torch, Lightning, MLflow or timm imported for ``--help``); this measures the
effect. Writes ``results/cli_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_facts

COMMANDS = [["--help"], ["train", "--help"], ["stack", "up", "--help"], ["deploy", "serve", "--help"],
            ["agent", "--help"], ["train", "--no-such-flag"]]
TARGET_S = 1.0


def wall_times(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli_startup.json"))
    args = parser.parse_args()
    rows = [{"command": "python -c pass", "times_s": wall_times([sys.executable, "-c", "pass"], args.runs)}]
    for cmd in COMMANDS:
        rows.append({"command": "edgeqat " + " ".join(cmd),
                     "times_s": wall_times([sys.executable, "-m", "edgeqat", *cmd], args.runs)})
    for row in rows:
        row["median_s"] = round(statistics.median(row["times_s"]), 3)
        row["max_s"] = round(max(row["times_s"]), 3)
        row["times_s"] = [round(t, 3) for t in row["times_s"]]
    Path(args.out).write_text(json.dumps({"machine": machine_facts(), "target_s": TARGET_S, "rows": rows}, indent=1))
    print(f"| command | median s (target < {TARGET_S:g} s) | worst s |\n|---|---|---|")
    for row in rows:
        print(f"| `{row['command']}` | {row['median_s']:.2f} | {row['max_s']:.2f} |")


if __name__ == "__main__":
    main()
