from edgeqat.tracking import flatten_config, resolve_tracking_uri
from edgeqat.tracking.params import MAX_PARAM_VALUE


def test_flatten_nested_keys_and_lists() -> None:
    flat = flatten_config({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": {}})
    assert flat == {"a.b": "1", "a.c.d": "x", "e": "[1, 2]", "f": "{}"}


def test_long_values_are_cut_to_mlflow_limit() -> None:
    assert len(flatten_config({"k": "x" * 10_000})["k"]) == MAX_PARAM_VALUE


def test_tracking_uri_precedence(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri() == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
