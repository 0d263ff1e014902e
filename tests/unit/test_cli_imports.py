"""The CLI answers at once: building the parser, every ``--help`` and an argument error import no torch,
Lightning, MLflow or timm (seconds of CPU on a 2-core machine, for a command that does nothing)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "mlflow", "timm")
PROBE = """
import contextlib, io, sys
from edgeqat.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main({argv!r})
    except SystemExit:
        pass
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [
    ["--help"], ["train", "--help"], ["models", "list", "--help"], ["stack", "up", "--help"],
    ["data", "publish", "--help"], ["demo", "--help"], ["promote", "--help"], ["deploy", "serve", "--help"],
    ["deploy", "targets", "--help"], ["sync", "--help"], ["sensitivity", "--help"], ["sensitivity", "r", "--top", "0"],
    ["agent", "--help"], ["agent", "predict", "--help"],
    ["train", "--no-such-flag"], ["promote", "m", "1"], ["deploy", "serve", "--port", "x"],
])
def test_help_and_argument_errors_import_nothing_heavy(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"edgeqat {' '.join(argv)} imported {out.stdout.strip()}"
