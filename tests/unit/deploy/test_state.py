"""Durable controller state: survives a reopen, sees a delivery once, keeps verdicts and history."""

from __future__ import annotations

from pathlib import Path

from edgeqat.deploy.state import Current, DeployState, Verdict


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = DeployState(tmp_path / "state.db")
    assert state.first_delivery("d1", "model_version_alias", "created", "m", "1")
    assert not state.first_delivery("d1", "model_version_alias", "created", "m", "1")
    state.record_verdict("local", "m", "1", "abc", Verdict("rejected", "too slow", {"latency_p95_ms": 9.0}))
    state.set_current("local", Current("m", "2", "def"), "2026-01-01T00:00:00+00:00", "deploy")
    state.close()

    again = DeployState(tmp_path / "state.db")
    assert not again.first_delivery("d1", "model_version_alias", "created", "m", "1")
    assert again.verdict("local", "m", "1", "abc") == Verdict("rejected", "too slow", {"latency_p95_ms": 9.0})
    assert again.verdict("local", "m", "1", "other-sha") is None  # a re-uploaded file is judged anew
    assert again.current("local") == Current("m", "2", "def")
    assert again.current("elsewhere") is None
    assert again.history("local") == [("m", "2", "deploy")]
    again.close()
