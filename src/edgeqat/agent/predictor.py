"""ONNX Runtime on the device: the smoke test a release must pass, and predictions from the active model.

Both use the CPU execution provider only: it exists in every onnxruntime build, and it is what
the INT8 model was verified against. The active model is whatever ``<home>/active.json`` names,
so predictions keep working from local files while the store is down.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgeqat.agent.images import load_image, preprocess
from edgeqat.agent.manifest import ManifestError, Preprocessing
from edgeqat.errors import EdgeqatError

__all__ = ["ACTIVE_FILE", "ActiveModel", "NoActiveModel", "Prediction", "Predictor", "SmokeTestError",
           "read_active", "smoke_test"]

ACTIVE_FILE = "active.json"


class SmokeTestError(EdgeqatError):
    """A release that does not load or does not produce finite logits of the expected shape."""


class NoActiveModel(EdgeqatError):
    """``<home>/active.json`` is missing or unreadable: the agent has not activated anything here."""


@dataclass(frozen=True)
class ActiveModel:
    """What ``active.json`` records about the model the device serves."""

    model_name: str
    version: str
    sha256: str
    model_path: Path
    preprocessing: Preprocessing
    target: str
    activated_at: str
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "version": self.version, "sha256": self.sha256,
                "model_path": str(self.model_path), "preprocessing": self.preprocessing.to_dict(),
                "target": self.target, "activated_at": self.activated_at, "manifest": self.manifest}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActiveModel:
        return cls(model_name=str(d["model_name"]), version=str(d["version"]), sha256=str(d["sha256"]),
                   model_path=Path(d["model_path"]), preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                   target=str(d["target"]), activated_at=str(d["activated_at"]), manifest=dict(d["manifest"]))


def read_active(home: Path) -> ActiveModel | None:
    """The active model recorded under ``home``; None when nothing was activated there yet.

    Raises:
        NoActiveModel: ``active.json`` exists but cannot be read.
    """
    path = home / ACTIVE_FILE
    try:
        return ActiveModel.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, ManifestError) as e:
        raise NoActiveModel(f"{path} is unreadable ({e}): delete it and run the agent again") from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT's warnings would interleave with the one-line results
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:240]


def _run(session: Any, pre: Preprocessing, x: np.ndarray) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    if pre.input_name not in names:
        raise SmokeTestError(f"model has no input {pre.input_name!r} (it has {names})")
    return np.asarray(session.run(None, {pre.input_name: x})[0])


def smoke_test(path: Path, pre: Preprocessing) -> None:
    """Load ``path`` and run one all-zero input: finite logits of shape ``(1, len(class_names))``.

    Raises:
        SmokeTestError: with a one-line reason.
    """
    try:
        session = _session(path)
    except Exception as e:  # ORT raises its own (pybind) exception types
        raise SmokeTestError(f"smoke test failed: cannot load model ({_first_line(e)})") from None
    x = np.zeros((1, pre.channels, pre.image_size, pre.image_size), np.float32)
    try:
        out = _run(session, pre, x)
    except SmokeTestError as e:
        raise SmokeTestError(f"smoke test failed: {e}") from None
    except Exception as e:
        raise SmokeTestError(f"smoke test failed: inference error ({_first_line(e)})") from None
    expected = (1, len(pre.class_names))
    if out.shape != expected:
        raise SmokeTestError(f"smoke test failed: output shape {out.shape}, expected {expected} "
                             f"({len(pre.class_names)} class names)")
    if not np.isfinite(out).all():
        raise SmokeTestError("smoke test failed: output is not finite")


class Prediction(NamedTuple):
    """One ranked class for one image: ``(path, class_name, prob)``."""

    path: str
    class_name: str
    prob: float


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    e = np.exp(z)
    return e / e.sum()


class Predictor:
    """Classifies image files with the model ``<home>/active.json`` names.

    Raises:
        NoActiveModel: nothing activated under ``home``, or its model file is gone.
    """

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home)
        active = read_active(self.home)
        if active is None:
            raise NoActiveModel(f"no active model in {self.home}: run the agent (edgeqat agent --once "
                                "--target NAME) until it activates a release")
        if not active.model_path.is_file():
            raise NoActiveModel(f"the active model file {active.model_path} is missing: run the agent again")
        # The file was verified when it was activated; a device's storage can still damage it later, and
        # serving changed bytes would be serving a model nobody gated.
        if sha256_file(active.model_path) != active.sha256:
            raise NoActiveModel(f"the active model file {active.model_path} no longer matches its sha256 "
                                "(damaged on disk): delete it and run the agent again to fetch the release")
        self.active = active
        try:
            self.session = _session(active.model_path)
        except Exception as e:  # ORT raises its own (pybind) exception types
            raise NoActiveModel(f"ONNX Runtime cannot load the active model {active.model_path} "
                                f"({_first_line(e)}): run the agent again") from None

    def predict(self, paths: list[str | Path], top_k: int = 1) -> list[Prediction]:
        """The ``top_k`` classes (softmax probability) per image, images in the order given.

        Raises:
            ImageError: an image that cannot be read or decoded.
        """
        pre = self.active.preprocessing
        results: list[Prediction] = []
        for path in paths:
            x = preprocess(load_image(path), pre)
            probs = softmax(_run(self.session, pre, x).reshape(-1))
            for i in np.argsort(-probs, kind="stable")[:top_k]:
                results.append(Prediction(str(path), pre.class_names[int(i)], float(probs[i])))
        return results
