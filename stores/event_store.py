"""Kafka mode's event store: eventsourcing's PostgreSQL persistence, with a bounded wait.

eventsourcing retries each store operation on a connection error 10 times, 0.2 s apart, and each
attempt waits its pool's timeout for a connection (`POSTGRES_CONNECT_TIMEOUT`, 5 s here): while
PostgreSQL refused connections, a request whose key was not cached, and every command, answered
503 only after about 50 s (a command, with the reads after it, after minutes), so clients timed out
first and the API's threads piled up. Its pool also waited longer and longer between attempts to
reconnect (1, 2, 4 ... s, up to 5 minutes), so after an outage of two minutes requests still failed
for another minute and a half with PostgreSQL back.

Here each operation has `wait_seconds` in all (`OMNI_DATABASE_WAIT_SECONDS`) to get its work done
through a connection: a connection that breaks under it (PostgreSQL restarted, a connection
dropped) is retried at once on another, so a blip costs a request nothing, and an outage costs it
`wait_seconds`, then eventsourcing's OperationalError (503 at the edge). The pool gives up a
reconnection attempt after `wait_seconds` too, and a request that finds the pool empty starts a
new one: once PostgreSQL answers again, the next request connects.

Each statement is bounded as the views' are (`OMNI_DATABASE_STATEMENT_SECONDS`, stores.database):
PostgreSQL cancels one that runs longer, and a connection borrowed for an operation (a wait for the
table's lock, the insert, the commit) that is not given back within twice that bound and a second
is cut (stores.statement_watch), so a frozen PostgreSQL costs a request that long and a 503, not
its client's whole timeout.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from eventsourcing import postgres
from eventsourcing.persistence import InterfaceError, OperationalError

from stores.database import SILENCE_PAST_STATEMENT, statement_timeout_ms
from stores.statement_watch import STATEMENTS

T = TypeVar("T")

WAIT_SECONDS = "OMNI_DATABASE_WAIT_SECONDS"  # the event store's environment (omni.bootstrap.event_store_env)
DEFAULT_WAIT_SECONDS = 3.0
STATEMENT_SECONDS = "OMNI_DATABASE_STATEMENT_SECONDS"  # unset: no bound on a statement
RETRY_PAUSE = 0.05  # between two attempts of one operation: a failure that comes at once does not spin
CONNECT_TIMEOUT = 2  # libpq's connect_timeout (whole seconds, at least 2): a host that does not answer

_deadlines = threading.local()  # the operation under way on this thread: when its wait ends


def _left(default: float) -> float:
    """What is left of this thread's operation's wait (`default` outside one)."""
    deadline: float | None = getattr(_deadlines, "at", None)
    return default if deadline is None else max(0.0, deadline - time.monotonic())


def bounded(wait_seconds: Callable[[Any], float]) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retries an operation on a connection error until `wait_seconds(recorder)` have passed since
    it began (inside an operation already bounded: until that one's end), then raises the error."""

    def decorate(operation: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(operation)
        def run(recorder: Any, *args: Any, **kwargs: Any) -> T:
            if getattr(_deadlines, "at", None) is not None:
                return operation(recorder, *args, **kwargs)
            _deadlines.at = time.monotonic() + wait_seconds(recorder)
            try:
                while True:
                    try:
                        return operation(recorder, *args, **kwargs)
                    except (OperationalError, InterfaceError):
                        if _left(0.0) <= RETRY_PAUSE:
                            raise
                        time.sleep(RETRY_PAUSE)
            finally:
                _deadlines.at = None

        return run

    return decorate


class BoundedPool(postgres.ConnectionPool[Any]):
    """A pool whose wait for a connection is what is left of the operation's (`_left`), and whose
    connections, while borrowed, are cut after `silence` seconds (None: never). An operation of the
    event store is a statement or two on one borrowed connection, with no caller's code between."""

    def __init__(self, *args: Any, silence: float | None = None, **kwargs: Any) -> None:
        self.silence = silence
        self._watched: dict[int, int] = {}  # id of a borrowed connection: its StatementWatch token
        super().__init__(*args, **kwargs)

    def getconn(self, timeout: float | None = None) -> Any:
        conn = super().getconn(_left(self.timeout) if timeout is None else timeout)
        if self.silence is not None:
            self._watched[id(conn)] = STATEMENTS.arm(conn, self.silence)
        return conn

    def putconn(self, conn: Any) -> None:
        token = self._watched.pop(id(conn), None)
        if token is not None:
            STATEMENTS.disarm(token)
        super().putconn(conn)


def bounded_pool(pool: postgres.ConnectionPool[Any], wait_seconds: float, statement_seconds: float | None = None) -> BoundedPool:
    """`pool` (eventsourcing's, not opened yet), but: each wait bounded as above, a reconnection given
    up after `wait_seconds` (the next request to find the pool empty starts another at once, rather
    than after the ever longer pauses of psycopg_pool's backoff), and a host that does not answer a
    connection given up on after CONNECT_TIMEOUT (libpq waits for the operating system's: minutes),
    and each statement bounded by `statement_seconds` (None: not)."""
    kwargs: dict[str, Any] = {**(pool.kwargs or {}), "connect_timeout": CONNECT_TIMEOUT}
    if statement_seconds is not None:
        kwargs["options"] = f"-c statement_timeout={statement_timeout_ms(statement_seconds)}"
    return BoundedPool(
        # An operation may wait for the table's lock (up to a statement's bound), then insert and commit.
        silence=None if statement_seconds is None else 2 * statement_seconds + SILENCE_PAST_STATEMENT,
        get_password_func=pool.get_password_func,
        connection_class=pool.connection_class,
        kwargs=kwargs,
        min_size=pool.min_size,
        max_size=pool.max_size,
        open=False,
        configure=pool._configure,
        timeout=wait_seconds,
        max_waiting=pool.max_waiting,
        max_lifetime=pool.max_lifetime,
        check=pool._check,
        reconnect_timeout=wait_seconds,
    )


def _wait(recorder: Any) -> float:
    return cast(float, recorder.datastore.pool.timeout)  # the pool's wait is the operation's (bounded_pool)


class AggregateRecorder(postgres.PostgresAggregateRecorder):
    insert_events = bounded(_wait)(postgres.PostgresAggregateRecorder.insert_events.__wrapped__)  # type: ignore[attr-defined]
    select_events = bounded(_wait)(postgres.PostgresAggregateRecorder.select_events.__wrapped__)  # type: ignore[attr-defined]


class ApplicationRecorder(postgres.PostgresApplicationRecorder):
    insert_events = bounded(_wait)(postgres.PostgresApplicationRecorder.insert_events.__wrapped__)  # type: ignore[attr-defined]
    select_events = bounded(_wait)(postgres.PostgresAggregateRecorder.select_events.__wrapped__)  # type: ignore[attr-defined]
    select_notifications = bounded(_wait)(postgres.PostgresApplicationRecorder.select_notifications.__wrapped__)  # type: ignore[attr-defined]
    max_notification_id = bounded(_wait)(postgres.PostgresApplicationRecorder.max_notification_id.__wrapped__)  # type: ignore[attr-defined]


class Factory(postgres.PostgresFactory):
    """eventsourcing's PostgresFactory, with the recorders above and a bounded pool. Its settings are
    eventsourcing's (POSTGRES_*), OMNI_DATABASE_WAIT_SECONDS and OMNI_DATABASE_STATEMENT_SECONDS."""

    aggregate_recorder_class = AggregateRecorder
    application_recorder_class = ApplicationRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        statement = self.env.get(STATEMENT_SECONDS)
        self.datastore.pool = bounded_pool(
            self.datastore.pool,
            float(self.env.get(WAIT_SECONDS) or DEFAULT_WAIT_SECONDS),
            float(statement) if statement else None,
        )
