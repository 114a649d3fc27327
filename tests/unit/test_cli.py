"""The `omni` command line as an operator meets it: a configuration or an argument it cannot use is
a message naming what to change and exit 2, never a traceback, and it starts nothing meanwhile."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from omni import cli
from stores.database import StoreUnavailable
from stores.shadow import PROJECTIONS
from streams.log import LogUnavailable


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


@pytest.mark.parametrize("args", [["--diff"], ["meters", "--swap"], []], ids=["diff", "swap-meters", "build"])
def test_replay_where_no_embedded_log_is_exits_2_and_creates_nothing(args: list[str], tmp_path: Path) -> None:
    """Run from the wrong directory it folded an empty log it had just created and said "0 rows
    differ from the live views", exit 0: as if the views were right."""
    data = tmp_path / "data"
    result = CliRunner().invoke(cli.app, ["replay", *args], env={"OMNI_DATA_DIR": str(data)})
    assert result.exit_code == 2, result.output
    assert f"omni replay: no log at {data.resolve() / 'log.sqlite'}" in result.output, result.output
    assert "rows differ" not in result.output
    assert not data.exists()


@pytest.mark.parametrize(
    ("where", "failure"),
    [("open", StoreUnavailable("PostgreSQL is unreachable: refused")), ("run", LogUnavailable("Kafka failed: refused"))],
    ids=["views-away", "log-away"],
)
def test_replay_with_a_service_away_exits_2_not_1(
    where: str, failure: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 1 means "the rebuilt views differ" to a script running `omni replay --diff`: PostgreSQL or
    Kafka away printed a traceback and exited 1."""

    def fail(*args: object, **kwargs: object) -> object:
        raise failure

    if where == "open":
        monkeypatch.setattr("omni.replay_cli.open_log_and_views", fail)
    else:

        class FailingReplayer:
            async def run(self, *args: object, **kwargs: object) -> object:
                raise failure

        monkeypatch.setattr("omni.replay_cli.build_replayer", lambda *args: FailingReplayer())
    env = {"OMNI_MODE": "kafka", "OMNI_DATABASE_SCHEMA": "never_used", "OMNI_DATA_DIR": str(tmp_path)}
    if where == "run":  # a log and views that open: the embedded ones, in an empty data directory
        env = {"OMNI_DATA_DIR": str(tmp_path)}
        (tmp_path / "log.sqlite").touch()
    result = CliRunner().invoke(cli.app, ["replay", "--diff"], env=env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert f"omni replay: {failure}" in result.output, result.output


def test_replay_help_names_every_projection() -> None:
    """`omni replay --help` left out `gdpr`, which the command takes."""
    shown = CliRunner().invoke(cli.app, ["replay", "--help"], env={"COLUMNS": "200"}).output
    assert [name for name in PROJECTIONS if re.search(rf"\b{name}\b", shown) is None] == [], shown


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nope", "not JSON"),
        ('{"owner": "x"}', "not a JSON list"),
        ('[{"owner": "x"}]', "item 0: needs owner, name and definition"),
        ('[{"owner": "x", "name": "a", "definition": {"objective": 5}}]', "item 0 (x/a): definition."),
    ],
    ids=["not-json", "not-a-list", "missing-name", "invalid-definition"],
)
def test_slo_rules_names_what_is_wrong_with_the_definitions(text: str, reason: str, tmp_path: Path) -> None:
    definitions = tmp_path / "slos.json"
    definitions.write_text(text)
    out = tmp_path / "rules" / "slos.rules.yml"
    result = CliRunner().invoke(cli.app, ["slo", "rules", "--definitions", str(definitions), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert f"omni slo rules: {definitions}: {reason}" in result.output, result.output
    assert not out.parent.exists()


def test_slo_rules_where_no_embedded_views_are_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    """Run without --definitions away from the data directory, it created views.sqlite there and
    died on "no such table: slos" with a traceback."""
    data, out = tmp_path / "data", tmp_path / "slos.rules.yml"
    result = CliRunner().invoke(cli.app, ["slo", "rules", "--out", str(out)], env={"OMNI_DATA_DIR": str(data)})
    assert result.exit_code == 2, result.output
    assert f"omni slo rules: no views at {data.resolve() / 'views.sqlite'}" in result.output, result.output
    assert not data.exists() and not out.exists()


class NoViews:
    """A PostgreSQL schema no Omni process has migrated (OMNI_DATABASE_SCHEMA misspelt)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    @contextmanager
    def transaction(self) -> Iterator[object]:
        raise psycopg.errors.UndefinedTable('relation "slos" does not exist')
        yield

    def close(self) -> None:
        pass


def away(*args: object, **kwargs: object) -> object:
    raise StoreUnavailable("PostgreSQL is unreachable: refused")


@pytest.mark.parametrize(
    ("database", "reason"),
    [(away, "PostgreSQL is unreachable: refused"), (NoViews, 'no views in PostgreSQL schema "typo" (OMNI_DATABASE_SCHEMA)')],
    ids=["away", "schema-without-views"],
)
def test_slo_rules_without_the_views_database_exits_2(
    database: object, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stores.database.PostgresDatabase", database)
    out = tmp_path / "slos.rules.yml"
    env = {"OMNI_MODE": "kafka", "OMNI_DATABASE_SCHEMA": "typo"}
    result = CliRunner().invoke(cli.app, ["slo", "rules", "--out", str(out)], env=env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert f"omni slo rules: {reason}" in result.output, result.output
    assert not out.exists()


def test_replay_with_both_diff_and_swap_says_which_command_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["replay", "--diff", "--swap"], env={"OMNI_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == 2 and "omni replay: choose one of --diff and --swap" in result.output, result.output
    assert not (tmp_path / "data").exists()


def test_kafka_mode_serves_only_with_an_admin_key_every_api_process_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without OMNI_ADMIN_KEY each Kafka-mode API process generated a key of its own in its own data
    directory: behind one address, an admin's request was refused by every process but one."""
    monkeypatch.setattr(cli, "platform_when_reachable", lambda settings: pytest.fail("built without an admin key"))
    monkeypatch.delenv("OMNI_ADMIN_KEY", raising=False)
    from tests.e2e.conftest import GDPR_MASTER_KEY

    env = {"OMNI_MODE": "kafka", "OMNI_DATA_DIR": str(tmp_path / "data"), "OMNI_GDPR_MASTER_KEY": GDPR_MASTER_KEY}
    result = CliRunner().invoke(cli.app, ["serve", "--port", "1"], env=env)
    assert result.exit_code == 2, result.output
    assert "omni serve: OMNI_ADMIN_KEY is not set" in result.output and "omni admin-key --new" in result.output
    assert not (tmp_path / "data").exists()
    first, second = (CliRunner().invoke(cli.app, ["admin-key", "--new"]) for _ in range(2))
    assert first.exit_code == second.exit_code == 0
    assert re.fullmatch(r"omni_admin_[\w-]{43}\n", first.output) and first.output != second.output


@pytest.mark.parametrize("command", [["serve"], ["admin-key"], ["replay"]], ids=["serve", "admin-key", "replay"])
def test_a_data_directory_that_is_a_file_is_named_with_exit_2(command: list[str], tmp_path: Path) -> None:
    taken = tmp_path / "data"
    taken.write_text("not a directory")
    result = CliRunner().invoke(cli.app, command, env={"OMNI_DATA_DIR": str(taken)})
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert f"omni {command[0]}: OMNI_DATA_DIR: {taken} is a file, not a directory" in result.output, result.output
    assert taken.read_text() == "not a directory"
