"""Two SQL databases behind one small interface: a transaction that runs statements.

Statements are written once with `?` placeholders; the PostgreSQL adapter
rewrites them to psycopg's `%s`. A schema script is one text for both: a
statement that starts with `/*sqlite*/` or `/*postgres*/` runs on that
dialect only (where column types must differ, e.g. exact decimals). SQLite
connections get `seen_digest(tenant_id, source, source_id)`, the de-duplication
digest (stores.views.seen_digest), which PostgreSQL computes with built-ins.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from psycopg_pool import ConnectionPool

from stores.statement_watch import STATEMENTS

_DIALECT_TAG = re.compile(r"/\*\s*(sqlite|postgres)\s*\*/")


def statements(script: str, dialect: str) -> list[str]:
    """The statements of a `;`-separated script that apply to `dialect`."""
    chosen = []
    for statement in script.split(";"):
        text = statement.strip()
        tag = _DIALECT_TAG.match(text)
        if text and (tag is None or tag.group(1) == dialect):
            chosen.append(text)
    return chosen


CONNECT_TIMEOUT = 2  # libpq's connect_timeout, in whole seconds (at least 2)
# A bounded statement's round trip unanswered this long past its statement_timeout is taken for a
# server that stopped answering (PostgreSQL's own cancel would have come by then), and cut.
SILENCE_PAST_STATEMENT = 1.0
# A batch of statements in one round trip (executemany's pipeline, a COPY) is given this many times
# a statement's bound: PostgreSQL bounds each of them, and they follow one another.
BATCH_BOUNDS = 4
# The probe of a pooled connection is never given less than this, whatever is left of the wait: a
# healthy connection under load is not to be cut for answering a millisecond late.
PROBE_AT_LEAST = 1.0


def statement_timeout_ms(seconds: float) -> int:
    """PostgreSQL's statement_timeout for a bound in seconds (0 would mean none)."""
    return max(1, round(seconds * 1000))


class StoreUnavailable(Exception):
    """The view database cannot be reached. Reads answer 503."""


class StatementTimedOut(StoreUnavailable):
    """PostgreSQL cancelled a statement that ran past OMNI_DATABASE_STATEMENT_SECONDS: the store is
    there, the question too heavy (a narrower one, or a quieter moment, is answered)."""


# SQLite's primary result codes that say the file cannot be used now, whatever the statement: the
# disk full, an I/O error, the file or its file system read-only, another connection's lock held past
# the timeout, the file not openable. A mistake in the SQL (SQLITE_ERROR) or a constraint is not one.
_OUTAGES = {
    5,  # SQLITE_BUSY
    6,  # SQLITE_LOCKED
    8,  # SQLITE_READONLY
    10,  # SQLITE_IOERR
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN
}


def sqlite_outage(failure: sqlite3.Error) -> bool:
    """Whether `failure` is of the file's own (full, read-only, I/O, locked), not of the statement."""
    code = getattr(failure, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _OUTAGES


# What the event store (eventsourcing) raises once an operation's wait is spent: PostgreSQL (or
# SQLite) unreachable, a connection lost or refused. As StoreUnavailable: 503, nothing was done.
EVENT_STORE_AWAY: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


class Tx(Protocol):
    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Append rows in bulk (PostgreSQL's COPY; SQLite inserts them): no conflict handling."""


class Database(Protocol):
    dialect: str

    def leadership(self, name: str) -> Leadership:
        """Who among many processes does a singleton job (the outbox relay)."""

    def claims(self) -> Claims:
        """This process's claims on named pieces of work (a GDPR request's job), exclusive across processes."""

    def transaction(self, *, bounded: bool = True) -> Any:
        """A context manager giving a Tx; commits on success, rolls back on error. `bounded=False`
        for a transaction whose statements may legitimately run long (a replay's swap): PostgreSQL's
        statement limit does not apply to it."""

    def reading(self) -> Any:
        """A context manager giving a Tx that only reads, from one snapshot, and waits for no writer:
        for a read that may be long (a meter query), so that it holds up no other reader or writer."""

    def migrate(self, script: str) -> None: ...

    def forget_overwritten(self) -> None:
        """Leave no copy of what the last commits overwrote or deleted in the database's own files
        (blocking): SQLite's write-ahead log keeps every page version until a checkpoint resets it.
        What erasure deletes (a person's data key) goes through this; PostgreSQL keeps old row
        versions and its own WAL until vacuum and recycling (README, GDPR)."""

    def close(self) -> None: ...


class Leadership(Protocol):
    def hold(self) -> bool:
        """True while this process leads; tries to become leader when it does not."""

    def release(self) -> None: ...


class _Sole:
    """SQLite lives in one process: it always leads."""

    def hold(self) -> bool:
        return True

    def release(self) -> None:
        pass


# A leader's session ends once it has been idle this long (PostgreSQL's idle_session_timeout, 14+),
# and its lock with it: a leader that stops without dying (SIGSTOP, a frozen VM, a network partition;
# the server still sees its connection open) would otherwise keep every other process from leading
# for hours. A live leader asks again at every turn (the relays at least once a second, the other
# duties every minute), so it keeps its session; one whose turn ran longer loses a turn at most.
LEADER_IDLE_SECONDS = 120.0


class _AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection of its own: lost with the connection, or
    when the connection has been idle for `idle_seconds` (its holder stopped answering)."""

    def __init__(
        self, url: str, name: str, idle_seconds: float = LEADER_IDLE_SECONDS, statement_seconds: float | None = None
    ) -> None:
        self.url = url
        self.name = name
        self.idle_seconds = idle_seconds
        self.statement_seconds = statement_seconds
        self._conn: psycopg.Connection[Any] | None = None

    def hold(self) -> bool:
        try:
            if self._conn is not None:
                with STATEMENTS.armed(self._conn, self.statement_seconds):
                    self._conn.execute("SELECT 1")
                return True
            idle = f"-c idle_session_timeout={int(self.idle_seconds * 1000)}"
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5, options=idle)
            with STATEMENTS.armed(conn, self.statement_seconds):
                row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (self.name,)).fetchone()
            if row and row[0]:
                self._conn = conn
                return True
            conn.close()
        except psycopg.Error:
            self.release()
        return False

    def release(self) -> None:
        _close_quietly(self._conn)
        self._conn = None


def _close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    """Close a session whose locks are being let go; one already broken is gone anyway."""
    if conn is not None:
        with suppress(psycopg.Error):
            conn.close()


class Claims(Protocol):
    def claim(self, name: str) -> bool:
        """True when this process now holds `name` and nobody else did (in this process or another)."""

    def release(self, name: str) -> None: ...

    def close(self) -> None: ...


class _LocalClaims:
    """SQLite lives in one process: a claim is a name in a set."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, name: str) -> bool:
        with self._lock:
            if name in self._held:
                return False
            self._held.add(name)
            return True

    def release(self, name: str) -> None:
        with self._lock:
            self._held.discard(name)

    def close(self) -> None:
        with self._lock:
            self._held.clear()


class _AdvisoryClaims(_LocalClaims):
    """PostgreSQL session advisory locks, all on one connection of this process: a process that dies
    loses its connection and so its claims. The set stays in front, because a session may take its
    own advisory lock twice."""

    def __init__(self, url: str, scope: str, statement_seconds: float | None = None) -> None:
        super().__init__()
        self.url = url
        self.scope = scope
        self.statement_seconds = statement_seconds
        self._conn: psycopg.Connection[Any] | None = None
        self._db_lock = threading.Lock()

    def _key(self, name: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{self.scope}:{name}".encode()).digest()[:8], "big", signed=True)

    def claim(self, name: str) -> bool:
        if not super().claim(name):
            return False
        try:
            with self._db_lock:
                if self._conn is None:
                    self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                with STATEMENTS.armed(self._conn, self.statement_seconds):
                    row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key(name),)).fetchone()
        except psycopg.Error:
            self._drop()
            row = None
        if row and row[0]:
            return True
        super().release(name)
        return False

    def release(self, name: str) -> None:
        try:
            with self._db_lock:
                if self._conn is not None:
                    with STATEMENTS.armed(self._conn, self.statement_seconds):
                        self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key(name),))
        except psycopg.Error:
            self._drop()  # the session is gone, and every lock it held with it
        super().release(name)

    def _drop(self) -> None:
        with self._db_lock:
            _close_quietly(self._conn)
            self._conn = None

    def close(self) -> None:
        self._drop()
        super().close()


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        marks = ", ".join("?" for _ in columns)
        self._db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


class SqliteDatabase:
    """One connection, one writer at a time (SQLite's own rule), WAL for concurrent reads: `reading`
    reads on connections of its own, which no transaction on the one connection waits for."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, durable: bool = False, secure_delete: bool = False) -> None:
        """`durable`: each commit is synced to disk before it returns (synchronous=FULL), for what a
        later commit elsewhere depends on (the data keys, which the log's sealed events need);
        otherwise a power cut may take the last commits back (NORMAL: the views, folded again).
        `secure_delete`: what this connection deletes or overwrites is zeroed in its page, not left
        in the page's free space (the data keys: see forget_overwritten)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._readers: list[sqlite3.Connection] = []  # idle read-only connections, for `reading`
        self._readers_lock = threading.Lock()
        self._closed = False
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        if secure_delete:
            self._db.execute("PRAGMA secure_delete=ON")
        # SQLite has no sha256: the schema's migration of the de-duplication memory calls this one.
        from stores.views import seen_digest  # here, not at the top: stores.views imports this module

        self._db.create_function("seen_digest", 3, seen_digest, deterministic=True)
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self, *, bounded: bool = True) -> Iterator[_SqliteTx]:
        """`bounded` has no meaning here: the file answers or fails, it is never silent."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as failure:
                raise StoreUnavailable(str(failure)) from failure
            try:
                yield _SqliteTx(self._db)
                self._db.execute("COMMIT")
            except BaseException as failure:
                if self._db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk, I/O)
                    self._db.execute("ROLLBACK")
                if isinstance(failure, sqlite3.Error) and sqlite_outage(failure):
                    raise StoreUnavailable(str(failure)) from failure
                raise

    def forget_overwritten(self, *, attempts: int = 50, pause: float = 0.1) -> None:
        """Copy the write-ahead log into the database and truncate it to nothing, so that no earlier
        version of a page (a data key before its erasure) is left in it; with `secure_delete` the
        pages copied hold no trace either. A reader still on an older snapshot (another connection
        to the file: the event store's) holds the log: tried again for up to `attempts` x `pause`
        seconds, then StoreUnavailable (the erasure is retried: README, GDPR)."""
        for _ in range(attempts):
            with self._lock:
                busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(pause)
        raise StoreUnavailable(f"{self._path.name}'s write-ahead log could not be reset: a reader holds it")

    @contextmanager
    def reading(self) -> Iterator[_SqliteTx]:
        """A read-only transaction on a connection of its own (kept for the next read), seeing one
        snapshot: in WAL mode it waits for no writer and no writer waits for it, so a long read
        holds up neither the folds' commits nor other requests' transactions (which share the one
        connection and its lock). A database in memory has one connection: its transaction."""
        if str(self._path) == ":memory:":
            with self.transaction() as tx:
                yield tx
            return
        with self._readers_lock:
            if self._closed:
                raise StoreUnavailable("the database is closed")
            reader = self._readers.pop() if self._readers else None
        try:
            if reader is None:
                reader = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
            reader.execute("BEGIN")
        except sqlite3.Error as failure:
            if reader is not None:
                reader.close()
            raise StoreUnavailable(str(failure)) from failure
        try:
            yield _SqliteTx(reader)
        finally:
            try:
                reader.execute("ROLLBACK")  # it wrote nothing: ending it lets the WAL be checkpointed past it
            except sqlite3.Error:
                reader.close()  # broken: not kept
            else:
                with self._readers_lock:
                    if self._closed:
                        reader.close()
                    else:
                        self._readers.append(reader)

    def migrate(self, script: str) -> None:
        with self._lock:
            self._db.executescript("".join(f"{statement};\n" for statement in statements(script, self.dialect)))

    def leadership(self, name: str) -> Leadership:
        return _Sole()

    def claims(self) -> Claims:
        return _LocalClaims()

    def close(self) -> None:
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        with self._lock:
            self._db.close()


class _PostgresTx:
    """Each statement's round trips bounded by `seconds` of silence (stores.statement_watch)."""

    dialect = "postgres"

    def __init__(self, conn: psycopg.Connection[Any], seconds: float | None = None) -> None:
        self._conn = conn
        self._seconds = seconds
        self._batch_seconds = None if seconds is None else seconds * BATCH_BOUNDS

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with STATEMENTS.armed(self._conn, self._seconds):
            cursor = self._conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with STATEMENTS.armed(self._conn, self._batch_seconds), self._conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)  # type: ignore[arg-type]

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        with (
            STATEMENTS.armed(self._conn, self._batch_seconds),
            self._conn.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def copy_text(self, table: str, columns: Sequence[str], texts: Iterable[str]) -> None:
        """Append rows given as COPY's text format (lines of tab-separated, escaped values)."""
        with (
            STATEMENTS.armed(self._conn, self._batch_seconds),
            self._conn.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for text in texts:
                copy.write(text)


class PostgresDatabase:
    """A psycopg 3 connection pool; each transaction borrows one connection.

    `statement_seconds` (None: no bound) bounds each statement twice: PostgreSQL cancels one that
    runs longer (its `statement_timeout`, the connection kept), and a round trip the server leaves
    unanswered a second past it (SIGSTOP, a frozen host: nothing is cancelled there) has its
    connection cut (stores.statement_watch). Either way the transaction raises StoreUnavailable."""

    dialect = "postgres"

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 8,
        leader_idle_seconds: float = LEADER_IDLE_SECONDS,
        wait_seconds: float = 10.0,
        statement_seconds: float | None = None,
    ) -> None:
        self.url = url
        self.schema = schema
        self.leader_idle_seconds = leader_idle_seconds
        self.statement_seconds = statement_seconds
        self._silence = None if statement_seconds is None else statement_seconds + SILENCE_PAST_STATEMENT
        options = f'-c search_path="{schema}"'
        if statement_seconds is not None:
            options += f" -c statement_timeout={statement_timeout_ms(statement_seconds)}"
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            # A host that does not answer is given up on after CONNECT_TIMEOUT (libpq would wait for
            # the operating system's: minutes).
            kwargs={"options": options, "autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            open=False,
            # A transaction waits at most this long for a connection, then StoreUnavailable (503).
            timeout=wait_seconds,
            # A reconnection is given up after as long: the next transaction to find the pool empty
            # starts another at once. (psycopg_pool's own backoff waited longer and longer, up to
            # 5 minutes: after an outage of two minutes, a minute and a half more of 503s.)
            reconnect_timeout=wait_seconds,
        )
        self._opened = False

    def _open(self) -> None:
        if not self._opened:
            try:
                self._pool.open(wait=True, timeout=10)
            except Exception as failure:
                raise StoreUnavailable(f"PostgreSQL is unreachable: {failure}") from failure
            self._opened = True

    @contextmanager
    def transaction(self, *, bounded: bool = True) -> Iterator[_PostgresTx]:
        self._open()
        silence = self._silence if bounded else None
        try:
            conn = self._working_connection()
            try:
                # BEGIN and COMMIT are round trips too: each bounded like a statement, and not the
                # caller's own time between statements.
                transaction = conn.transaction()
                with STATEMENTS.armed(conn, silence):
                    transaction.__enter__()
                try:
                    if not bounded and self.statement_seconds is not None:
                        conn.execute("SET LOCAL statement_timeout = 0")
                    yield _PostgresTx(conn, silence)
                except BaseException as failure:
                    with STATEMENTS.armed(conn, silence):
                        if not transaction.__exit__(type(failure), failure, failure.__traceback__):
                            raise
                else:
                    with STATEMENTS.armed(conn, silence):
                        transaction.__exit__(None, None, None)
            finally:
                self._pool.putconn(conn)
        except psycopg.errors.QueryCanceled as failure:
            raise StatementTimedOut(f"PostgreSQL cancelled a statement past its time: {failure}") from failure
        except (psycopg.OperationalError, psycopg.InterfaceError) as failure:
            raise StoreUnavailable(f"PostgreSQL failed: {failure}") from failure
        except Exception as failure:
            if type(failure).__name__ == "PoolTimeout":
                raise StoreUnavailable(f"PostgreSQL pool exhausted or unreachable: {failure}") from failure
            raise

    def _working_connection(self) -> psycopg.Connection[Any]:
        """A connection from the pool that answers, within the pool's wait. One that does not (broken
        by a restart of PostgreSQL, or cut) goes back, to be replaced, and the next is tried at once:
        psycopg_pool's own check paused 1, 2, 4 s between two, so after a blip a request waited
        through every broken connection of the pool, and past its wait it was answered 503."""
        deadline = time.monotonic() + self._pool.timeout
        while True:
            conn = self._pool.getconn(timeout=max(0.0, deadline - time.monotonic()))
            try:
                # one round trip (autocommit: no transaction left open), within what is left of the wait
                with STATEMENTS.armed(conn, max(PROBE_AT_LEAST, deadline - time.monotonic())):
                    conn.execute("")
            except psycopg.Error:
                self._pool.putconn(conn)  # broken: the pool discards it and connects another
                continue
            return conn

    @contextmanager
    def reading(self) -> Iterator[_PostgresTx]:
        """A transaction of the pool's (MVCC: readers wait for no writer)."""
        with self.transaction() as tx:
            yield tx

    def forget_overwritten(self) -> None:
        """Nothing to do at the SQL level: PostgreSQL keeps a dead row version until vacuum and its WAL
        until recycled, out of a client's reach (README, GDPR: the master key is not in the database)."""

    def migrate(self, script: str) -> None:
        self._open()
        with self._pool.connection() as conn, conn.transaction():
            # Many workers may start at once; one migrates, the others wait for it.
            conn.execute("SET LOCAL statement_timeout = 0")  # a migration may take long, and waits for another's
            conn.execute("SELECT pg_advisory_xact_lock(7243)")
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            conn.execute(f'SET LOCAL search_path TO "{self.schema}"')
            for statement in statements(script, self.dialect):
                conn.execute(statement)

    def leadership(self, name: str) -> Leadership:
        return _AdvisoryLock(self.url, f"{self.schema}:{name}", self.leader_idle_seconds, self._silence)

    def claims(self) -> Claims:
        return _AdvisoryClaims(self.url, self.schema, self._silence)

    @property
    def pool(self) -> ConnectionPool:
        """For the metrics (omni.metrics.Pools): its get_stats()."""
        return self._pool

    def close(self) -> None:
        self._pool.close()
