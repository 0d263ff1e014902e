"""The agent's subprocess really is a device: the heavy packages fail to import, the agent's modules do not."""

from __future__ import annotations

import subprocess

from tests.unit.agent.helpers import BLOCKED, device_command, device_env

CHECK = f"""
for name in {BLOCKED!r}:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{{name}} imported in the device process")
import edgeqat.agent, edgeqat.agent.agent, edgeqat.agent.cli, edgeqat.agent.store, edgeqat.agent.images
import edgeqat.agent.manifest, edgeqat.agent.predictor, edgeqat.agent.ed25519, edgeqat.agent.keys, edgeqat.quant.isa
import onnxruntime, numpy, boto3
from edgeqat.agent.store import open_store
open_store("s3://bucket/prefix/", endpoint_url="http://127.0.0.1:1")
print("device ok")
"""


def test_blocked_packages_fail_and_agent_modules_import() -> None:
    env = device_env({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    proc = subprocess.run(device_command(CHECK), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "device ok"
