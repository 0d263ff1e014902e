"""Log an ONNX file as an MLflow 3 LoggedModel (and register it) as one replayable recorder operation.

The run's recorder sends operations in order and retries a transient failure with the *same*
operation, so every step here records its progress in the op (``model_id``, ``uploaded``, ...) and a
retry, or ``edgeqat sync`` replaying a spool, resumes after the last step that reached the server:
nothing is created twice. Before creating, the LoggedModel and the model version are looked up by
run, for the case where the server did the work but its answer was lost.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeqat.registry.versions import register_version

OP = "logged_model"
FILE_KEYS = ("path", "example")  # files the op needs: copied into a spool with it


@dataclass(frozen=True)
class LoggedModelSpec:
    """One model file for the run's "Logged models", optionally registered as a new version.

    ``example`` is a ``.npy`` batch of one preprocessed input (the MLflow input example);
    ``metadata`` goes into the MLmodel file (``metadata.edgeqat.preprocessing`` is what a device needs).
    """

    name: str
    path: str
    example: str
    metadata: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    model_type: str = "onnx"
    register_as: str | None = None
    version_tags: dict[str, str] = field(default_factory=dict)

    def to_op(self) -> dict[str, Any]:
        return {"op": OP, **asdict(self)}


def apply_logged_model(client: Any, run_id: str, op: dict[str, Any]) -> None:
    """Carry out (or resume) a ``logged_model`` op; progress is written into ``op`` step by step."""
    from mlflow.entities import LoggedModelOutput

    if not op.get("model_id"):
        op["model_id"] = _find_or_create(client, run_id, op)
    model_id = op["model_id"]
    if not op.get("uploaded"):
        with tempfile.TemporaryDirectory(prefix="edgeqat-model-") as tmp:
            save_onnx_model(client, model_id, run_id, op, Path(tmp))
            client.log_model_artifacts(model_id, tmp)
        op["uploaded"] = True
    if not op.get("output_logged"):
        outputs = client.get_run(run_id).outputs
        if model_id not in {o.model_id for o in (outputs.model_outputs if outputs else [])}:
            client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])  # a second one is refused
        op["output_logged"] = True
    if not op.get("finalized"):
        client.finalize_logged_model(model_id, "READY")
        op["finalized"] = True
    if op.get("register_as") and not op.get("version"):
        version = register_version(client, op["register_as"], model_id, run_id, op["version_tags"])
        op["version"] = version.version
        client.set_tag(run_id, "edgeqat.model_version", f"{op['register_as']}/{version.version}")


def _find_or_create(client: Any, run_id: str, op: dict[str, Any]) -> str:
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [experiment_id], filter_string=f"name = '{op['name']}' AND source_run_id = '{run_id}'", max_results=1)
    if found:
        return found[0].model_id
    model = client.create_logged_model(experiment_id, name=op["name"], source_run_id=run_id, tags=op["tags"],
                                       params=op["params"], model_type=op["model_type"])
    return model.model_id


def save_onnx_model(client: Any, model_id: str, run_id: str, op: dict[str, Any], dest: Path) -> Path:
    """The MLflow ``onnx`` flavor directory for the op's file, with signature, input example and metadata.

    MLflow re-serializes the proto; the original bytes are put back afterwards so the sha256 a
    version is tagged with is that of the file the run logged, the gate downloads and the device runs.
    """
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    proto = onnx.load(op["path"])
    example = np.load(op["example"])
    inp, out = proto.graph.input[0], proto.graph.output[0]
    classes = out.type.tensor_type.shape.dim[-1].dim_value or -1
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(example.shape[1]), -1, -1), inp.name)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(classes)), out.name)]),
    )
    artifact_location = client.get_logged_model(model_id).artifact_location
    mlflow_model = Model(artifact_path=artifact_location, model_uuid=model_id, run_id=run_id, model_id=model_id)
    mlflow.onnx.save_model(proto, str(dest), mlflow_model=mlflow_model, signature=signature,
                           input_example={inp.name: example}, metadata=op["metadata"],
                           save_as_external_data=False)
    shutil.copyfile(op["path"], dest / "model.onnx")
    return dest
