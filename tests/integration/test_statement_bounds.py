"""PostgreSQL statements bounded in time, against a real server behind a proxy that can freeze it.

A server that stops answering (SIGSTOP, a frozen host) cancels nothing and closes nothing: before
the bound, a transaction on it waited for as long as the socket stayed open, for ever here. These
tests hold the bound's three sides: a silent server is given up on (StoreUnavailable, soon after
the bound), a slow statement on a live server is cancelled by the server itself (the connection
kept), and the caller's own time between statements is not counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest
from eventsourcing.persistence import OperationalError
from eventsourcing.utils import get_topic

from stores.database import SILENCE_PAST_STATEMENT, PostgresDatabase, StatementTimedOut, StoreUnavailable
from stores.event_store import Factory
from stores.statement_watch import STATEMENTS
from tests.integration.conftest import new_schema_name
from tests.tcp_proxy import TcpProxy

BOUND = 0.5  # statement seconds here
GIVEN_UP_WITHIN = BOUND + SILENCE_PAST_STATEMENT + 2.0  # room for a loaded machine; it was for ever


def through(proxy: TcpProxy, database_url: str) -> str:
    url = urlparse(database_url)
    return urlunparse(url._replace(netloc=f"{url.netloc.rpartition('@')[0]}@{proxy.address}"))


@pytest.fixture
def proxy(database_url: str) -> Iterator[TcpProxy]:
    url = urlparse(database_url)
    with TcpProxy(url.hostname or "127.0.0.1", url.port or 5432) as running:
        yield running
        running.thaw()


@pytest.fixture
def bounded_db(proxy: TcpProxy, database_url: str, pg_schemas: list[str]) -> Iterator[PostgresDatabase]:
    schema = new_schema_name()
    pg_schemas.append(schema)
    db = PostgresDatabase(through(proxy, database_url), schema=schema, wait_seconds=1.0, statement_seconds=BOUND)
    db.migrate("CREATE TABLE marks (n integer)")
    yield db
    db.close()


def one(db: PostgresDatabase, sql: str = "SELECT 1") -> list[tuple[object, ...]]:
    with db.transaction() as tx:
        return tx.execute(sql)


def test_a_silent_server_is_given_up_on_soon_after_the_bound(bounded_db: PostgresDatabase, proxy: TcpProxy) -> None:
    assert one(bounded_db) == [(1,)]
    cut_before = STATEMENTS.cut
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        one(bounded_db)
    took = time.monotonic() - started
    assert took < GIVEN_UP_WITHIN, f"given up on after {took:.1f} s"
    assert took >= BOUND, f"given up on after {took:.2f} s, before the bound"
    assert STATEMENTS.cut > cut_before  # the watch cut it: the server itself said nothing

    proxy.thaw()
    assert one(bounded_db) == [(1,)]  # the broken connection was replaced


def test_a_silent_server_at_commit_is_given_up_on_too(bounded_db: PostgresDatabase, proxy: TcpProxy) -> None:
    started = 0.0
    with pytest.raises(StoreUnavailable), bounded_db.transaction() as tx:
        tx.execute("INSERT INTO marks VALUES (1)")
        proxy.freeze()
        started = time.monotonic()
    assert time.monotonic() - started < GIVEN_UP_WITHIN
    proxy.thaw()
    # Whether it committed is not known, as for any commit whose answer was lost: the COMMIT sent
    # reaches a server that wakes up. What is known is that the caller was told it failed, in time.
    assert one(bounded_db, "SELECT count(*) FROM marks")[0][0] in (0, 1)


def test_a_slow_statement_is_cancelled_by_the_server_and_its_connection_kept(bounded_db: PostgresDatabase) -> None:
    assert one(bounded_db) == [(1,)]
    cut_before = STATEMENTS.cut
    started = time.monotonic()
    with pytest.raises(StatementTimedOut, match="statement timeout"):  # told apart from an outage (503 statement-timeout)
        one(bounded_db, "SELECT pg_sleep(5)")
    assert time.monotonic() - started < BOUND + SILENCE_PAST_STATEMENT
    assert STATEMENTS.cut == cut_before  # PostgreSQL cancelled it: nothing to cut
    assert one(bounded_db) == [(1,)]


def test_the_callers_own_time_between_statements_is_not_bounded(bounded_db: PostgresDatabase) -> None:
    with bounded_db.transaction() as tx:
        tx.execute("INSERT INTO marks VALUES (1)")
        time.sleep(BOUND + SILENCE_PAST_STATEMENT + 0.3)  # the caller's work, not a round trip
        tx.execute("INSERT INTO marks VALUES (2)")
    assert one(bounded_db, "SELECT count(*) FROM marks") == [(2,)]


def test_an_unbounded_transaction_may_run_long(bounded_db: PostgresDatabase) -> None:
    with bounded_db.transaction(bounded=False) as tx:
        tx.execute(f"SELECT pg_sleep({BOUND + SILENCE_PAST_STATEMENT + 0.2})")
    assert one(bounded_db, "SHOW statement_timeout") == [(f"{round(BOUND * 1000)}ms",)]  # the session's bound is back


def test_leadership_on_a_silent_server_is_let_go_within_the_bound(bounded_db: PostgresDatabase, proxy: TcpProxy) -> None:
    leading = bounded_db.leadership(f"test-{new_schema_name()}")
    assert leading.hold()
    proxy.freeze()
    answers: list[bool] = []
    worker = threading.Thread(target=lambda: answers.append(leading.hold()), daemon=True)
    worker.start()
    worker.join(GIVEN_UP_WITHIN)
    assert answers == [False], "the leader's check waited on a silent server"
    leading.release()


def test_the_event_store_gives_up_on_a_silent_server(proxy: TcpProxy, database_url: str, pg_schemas: list[str]) -> None:
    schema = new_schema_name()
    pg_schemas.append(schema)
    url = urlparse(through(proxy, database_url))
    env = {
        "PERSISTENCE_MODULE": get_topic(Factory),
        "OMNI_DATABASE_WAIT_SECONDS": "1.0",
        "OMNI_DATABASE_STATEMENT_SECONDS": str(BOUND),
        "POSTGRES_DBNAME": url.path.lstrip("/"),
        "POSTGRES_HOST": url.hostname or "",
        "POSTGRES_PORT": str(url.port),
        "POSTGRES_USER": url.username or "",
        "POSTGRES_PASSWORD": url.password or "",
        "POSTGRES_SCHEMA": schema,
        "CREATE_TABLE": "true",
    }
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    factory = Factory(env)
    recorder = factory.application_recorder()
    try:
        assert recorder.max_notification_id() is None
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(OperationalError):
            recorder.max_notification_id()
        took = time.monotonic() - started
        assert took < GIVEN_UP_WITHIN + BOUND + 1.0, f"given up on after {took:.1f} s"  # twice the bound, then the wait's retries
        proxy.thaw()
        assert recorder.max_notification_id() is None
    finally:
        factory.close()
