"""`omni worker` and `omni relay` are Kafka mode's processes: started in embedded mode (OMNI_MODE
unset) each exits 2 saying so. A walkthrough started `omni relay` without OMNI_MODE: it reported
ready, made an embedded data directory (an admin key, a GDPR master key, an event store) in the
working directory and closed a billing period there, while the Kafka deployment's outbox went
unrelayed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import omni.relay_process
import streams.faust_app
from omni import cli


@pytest.mark.parametrize("command", ["worker", "relay"], ids=["worker", "relay"])
def test_kafka_only_commands_refuse_embedded_mode(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(streams.faust_app, "run_worker", lambda settings: ran.append("worker"))
    monkeypatch.setattr(omni.relay_process, "run_relay", lambda settings: ran.append("relay"))
    data = tmp_path / "data"
    refused = CliRunner().invoke(cli.app, [command], env={"OMNI_MODE": "embedded", "OMNI_DATA_DIR": str(data)})
    assert refused.exit_code == 2, refused.output
    assert "OMNI_MODE=kafka" in refused.output
    assert ran == [] and not data.exists()
