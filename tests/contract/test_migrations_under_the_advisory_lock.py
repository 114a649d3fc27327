"""PostgreSQL: processes starting at once migrate the views' schema one at a time (stores.database,
`migrate` under an advisory lock), so every one of them starts and the schema ends as one alone makes.

The test makes the race certain rather than likely: migration A does all its work and then waits,
before it commits, on a lock the test holds; migration B starts meanwhile. B must wait for A (on
the migration lock) rather than create what A has created but not committed yet, which PostgreSQL
fails with a duplicate key once A commits.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from stores import views
from stores.database import PostgresDatabase
from tests.contract.conftest import DATABASE_URL, postgres_or_skip


@pytest.fixture
def schemas() -> Iterator[list[str]]:
    postgres_or_skip()
    created: list[str] = []
    yield created
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        for schema in created:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def named(application_name: str) -> str:
    """DATABASE_URL, its connections showing `application_name` in pg_stat_activity."""
    return f"{DATABASE_URL}{'&' if '?' in DATABASE_URL else '?'}application_name={application_name}"


class Migration(threading.Thread):
    def __init__(self, url: str, schema: str, script: str) -> None:
        super().__init__(daemon=True)
        self.url, self.schema, self.script = url, schema, script
        self.failure: BaseException | None = None

    def run(self) -> None:
        db = PostgresDatabase(self.url, schema=self.schema)
        try:
            db.migrate(self.script)
        except BaseException as failure:
            self.failure = failure
        finally:
            db.close()


def activity(conn: psycopg.Connection, application_name: str) -> tuple[str | None, str | None, str | None]:
    """(state, wait_event_type, query) of the one backend of that name; all None if it has none."""
    row = conn.execute(
        "SELECT state, wait_event_type, query FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    ).fetchone()
    return (row[0], row[1], row[2]) if row else (None, None, None)


def wait_until_waiting_on_a_lock(conn: psycopg.Connection, application_name: str, migration: Migration) -> None:
    deadline = time.monotonic() + 10
    while (seen := activity(conn, application_name))[1] != "Lock":
        if not migration.is_alive():
            pytest.fail(f"{application_name} ended ({migration.failure!r}) without waiting for a lock; last seen {seen}")
        if time.monotonic() > deadline:
            pytest.fail(f"{application_name} was not waiting for a lock within 10 s; last seen {seen}")
        time.sleep(0.01)


def layout(conn: psycopg.Connection, schema: str) -> dict[str, list[tuple[object, ...]]]:
    """The schema's tables, columns, indexes and constraints, with its name left out."""
    return {
        "columns": conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = %s ORDER BY table_name, ordinal_position",
            (schema,),
        ).fetchall(),
        "indexes": conn.execute(
            "SELECT tablename, indexname, replace(replace(indexdef, %s, ''), %s, '') FROM pg_indexes "
            "WHERE schemaname = %s ORDER BY tablename, indexname",
            (f'"{schema}".', f"{schema}.", schema),
        ).fetchall(),
        "constraints": conn.execute(
            "SELECT t.relname, c.conname, c.contype, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid WHERE c.connamespace = %s::regnamespace ORDER BY 1, 2",
            (f'"{schema}"',),
        ).fetchall(),
    }


def test_two_migrations_of_a_fresh_schema_at_once_both_succeed_and_make_the_schema_once(schemas: list[str]) -> None:
    fresh, alone = f"t_{uuid.uuid4().hex[:12]}", f"t_{uuid.uuid4().hex[:12]}"
    schemas += [fresh, alone]
    key = uuid.uuid4().int % 2**62  # the test's own lock, which holds A's transaction open
    a_name, b_name = f"migrate-a-{fresh}", f"migrate-b-{fresh}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            a = Migration(named(a_name), fresh, f"{views.SCHEMA};\nSELECT pg_advisory_xact_lock_shared({key})")
            a.start()
            wait_until_waiting_on_a_lock(conn, a_name, a)  # everything created, nothing committed
            b = Migration(named(b_name), fresh, views.SCHEMA)
            b.start()
            wait_until_waiting_on_a_lock(conn, b_name, b)  # B is held up by A: on the migration lock, with it
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        for migration in (a, b):
            migration.join(timeout=20)
            assert not migration.is_alive(), "a migration did not finish"
        assert (a.failure, b.failure) == (None, None)

        reference = PostgresDatabase(DATABASE_URL, schema=alone)
        try:
            reference.migrate(views.SCHEMA)
        finally:
            reference.close()
        expected = layout(conn, alone)
        assert expected["columns"], "the reference schema has no tables"
        assert layout(conn, fresh) == expected
