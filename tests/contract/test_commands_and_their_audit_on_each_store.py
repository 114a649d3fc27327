"""A command's events and its audit entry are stored in one transaction, in either event store
(eventsourcing on SQLite, embedded mode; on PostgreSQL, Kafka mode): a write that fails part way
leaves neither, so the outbox relay never publishes a change without its audit entry, nor an
audit entry for a change that did not happen.

The failure is injected in the database itself: a trigger fails the insert of one event's row
(the audit entry's, or the command's own), after the rows before it were written in the same
transaction.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from commands.control_plane import AuditEntry, CommandContext, ControlPlane
from omni.bootstrap import event_store_env
from omni.settings import Settings
from schemas.meters import MeterDefinition
from tests.contract.conftest import DATABASE_URL, postgres_or_skip

TOPIC = "commands.control_plane:"  # eventsourcing's topic of each event class, by its qualified name
CTX = CommandContext(key_id="admin", ip="10.0.0.1", user_agent="test")


class Store:
    """A ControlPlane on one database, and a switch that makes that database fail one kind of insert."""

    def __init__(self, control: ControlPlane, fail_inserts_of: Callable[[str | None], None]) -> None:
        self.control = control
        self.fail_inserts_of = fail_inserts_of  # an event's class name (e.g. "AuditEntry.Recorded"), or None

    def stored(self) -> list[Any]:
        """Every event in the store, in notification order."""
        notifications = self.control.recorder.select_notifications(start=1, limit=10_000)
        return [self.control.mapper.to_domain_event(n) for n in notifications]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        settings = Settings(mode="embedded", data_dir=tmp_path)
        control = ControlPlane(env=event_store_env(settings))
        path = tmp_path / "eventstore.sqlite"

        def fail_sqlite(kind: str | None) -> None:
            with sqlite3.connect(path) as db:
                db.execute("DROP TRIGGER IF EXISTS fail_insert")
                if kind is not None:
                    # abs() of the smallest integer fails with "integer overflow": an ordinary
                    # error, not a constraint violation (which eventsourcing reports as a conflict).
                    db.execute(
                        "CREATE TRIGGER fail_insert BEFORE INSERT ON stored_events "
                        f"WHEN NEW.topic = '{TOPIC}{kind}' BEGIN SELECT abs(-9223372036854775808); END"
                    )

        yield Store(control, fail_sqlite)
        control.close()
        return
    postgres_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    control = ControlPlane(env=event_store_env(Settings(mode="kafka", database_url=DATABASE_URL, database_schema=schema)))
    table = f'"{schema}".{control.recorder.events_table_name}'  # type: ignore[attr-defined]

    def fail_postgres(kind: str | None) -> None:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f"DROP TRIGGER IF EXISTS fail_insert ON {table}")
            if kind is not None:
                conn.execute(
                    f'CREATE OR REPLACE FUNCTION "{schema}".fail_insert() RETURNS trigger LANGUAGE plpgsql '
                    "AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
                )
                conn.execute(
                    f"CREATE TRIGGER fail_insert BEFORE INSERT ON {table} FOR EACH ROW "
                    f"WHEN (NEW.topic = '{TOPIC}{kind}') EXECUTE FUNCTION \"{schema}\".fail_insert()"
                )

    yield Store(control, fail_postgres)
    control.close()
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def tenant_with_key(control: ControlPlane) -> tuple[str, str]:
    tenant, issued = control.create_tenant(CTX, "acme", "pro")
    return str(tenant.id), issued.key_id


# Each command: what it stores (its events' class names, then its audit entry's action), and how to issue it.
COMMANDS: dict[str, tuple[list[str], str, Callable[[ControlPlane, tuple[str, str]], object]]] = {
    "create_tenant": (
        ["Tenant.Created", "ApiKey.Issued", "KeyRing.Opened"],
        "tenant.create",
        lambda c, _: c.create_tenant(CTX, "b", "pro"),
    ),
    "issue_key": (["ApiKey.Issued", "KeyRing.KeyAdded"], "api_key.issue", lambda c, given: c.issue_key(CTX, given[0], "ci")),
    "revoke_key": (["ApiKey.Revoked", "KeyRing.KeyRemoved"], "api_key.revoke", lambda c, given: c.revoke_key(CTX, given[1])),
    "define_meter": (
        ["Meter.Defined"],
        "meter.define",
        lambda c, _: c.define_meter(CTX, MeterDefinition(slug="calls", event_type="call", aggregation="COUNT")),
    ),
}
CASES = [(command, failing) for command, (events, _, _) in COMMANDS.items() for failing in [*events, "AuditEntry.Recorded"]]


def kind(event: Any) -> str:
    return type(event).__qualname__


@pytest.mark.parametrize(("command", "failing"), CASES)
def test_a_write_failing_part_way_stores_neither_the_command_nor_its_audit_entry(
    store: Store, command: str, failing: str
) -> None:
    events, action, issue = COMMANDS[command]
    given = tenant_with_key(store.control)
    before = store.stored()

    store.fail_inserts_of(failing)
    with pytest.raises(Exception) as failed:
        issue(store.control, given)
    causes = [failed.value, failed.value.__cause__, failed.value.__context__]
    assert any(c is not None and ("injected failure" in str(c) or "integer overflow" in str(c)) for c in causes), causes

    after = store.stored()
    assert after[: len(before)] == before
    new = after[len(before) :]
    assert [kind(e) for e in new if not isinstance(e, AuditEntry.Recorded)] == [], "the command's events were stored"
    assert [e for e in new if isinstance(e, AuditEntry.Recorded) and e.outcome == "accepted"] == [], (
        "an audit entry says it was done"
    )

    # Once the database takes writes again the same command is stored whole, with its audit entry.
    store.fail_inserts_of(None)
    issue(store.control, given)
    done = store.stored()[len(after) :]
    assert [kind(e) for e in done] == [*events, "AuditEntry.Recorded"]
    assert (done[-1].action, done[-1].outcome) == (action, "accepted")


def test_a_key_ring_snapshot_is_kept_and_loaded_on_each_store(store: Store) -> None:
    """The key ring's snapshots (commands.control_plane.KEY_RING_SNAPSHOT_EVERY) live in a table of
    their own beside the events, made with them on start, on SQLite and on PostgreSQL; the relay's
    notifications never hold them."""
    from commands.control_plane import KeyRing
    from commands.ids import key_ring_aggregate_id

    control = store.control
    control.snapshotting_intervals = {KeyRing: 4}  # type: ignore[misc]
    tenant_id, first = tenant_with_key(control)
    kept = [control.issue_key(CTX, tenant_id, f"k{n}").key_id for n in range(5)]  # versions 2 to 6
    control.revoke_key(CTX, kept[0])  # version 7
    control.revoke_key(CTX, kept[1])  # version 8
    ring_id = key_ring_aggregate_id(tenant_id)
    assert [s.originator_version for s in control.snapshots.get(ring_id)] == [4, 8]  # type: ignore[union-attr]
    assert control.repository.get(ring_id).key_ids == [first, *kept[2:]]
    assert all(not isinstance(event, dict) and "Snapshot" not in type(event).__name__ for event in store.stored())
