"""The `omni` command line as an operator meets it: a configuration or an argument it cannot use is
a message naming what to change and exit 2, never a traceback, and it starts nothing meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from omni import cli


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("OMNI_MODE", "bogus", ["admin-key"]),
        ("OMNI_USAGE_PARTITIONS", "abc", ["serve"]),
        ("OMNI_TOPIC_PREFIX", "no spaces", ["relay"]),
        ("OMNI_DATABASE_SCHEMA", "Not-A-Schema", ["replay", "--diff"]),
        ("OMNI_CPU_NICE", "99", ["worker"]),
    ],
    ids=["mode-admin-key", "partitions-serve", "topic-prefix-relay", "schema-replay", "cpu-nice-worker"],
)
def test_a_setting_it_cannot_read_is_named_with_exit_2(variable: str, value: str, command: list[str], tmp_path: Path) -> None:
    env = {"OMNI_DATA_DIR": str(tmp_path / "data"), variable: value}
    result = CliRunner().invoke(cli.app, command, env=env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert f"omni {command[0]}: {variable}" in result.output, result.output
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


@pytest.mark.parametrize("command", ["relay", "worker"], ids=["relay", "worker"])
def test_the_kafka_mode_processes_refuse_embedded_mode(command: str, tmp_path: Path) -> None:
    """Embedded mode's relay and runner run inside `omni serve`: a relay of its own beside it would
    publish the same outbox a second time and close billing periods on a data directory of its own."""
    result = CliRunner().invoke(cli.app, [command], env={"OMNI_DATA_DIR": str(tmp_path / "data"), "OMNI_MODE": "embedded"})
    assert result.exit_code == 2, result.output
    assert f"omni {command}: `omni {command}` is for OMNI_MODE=kafka" in result.output, result.output
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("port", ["99999", "65536", "-1"], ids=["99999", "65536", "negative"])
def test_serve_refuses_a_port_no_socket_has(port: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--port 99999 listened on 34463 (the port modulo 65536) while it printed :99999."""
    served: list[int] = []
    monkeypatch.setattr("api.server.serve_app", lambda app, settings, host, port: served.append(port))
    result = CliRunner().invoke(cli.app, ["serve", "--port", port], env={"OMNI_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == 2, result.output
    assert "--port" in result.output and "1<=x<=65535" in result.output, result.output
    assert served == [] and not (tmp_path / "data").exists()
