"""An append-only log in SQLite: topics, partitions, offsets, like Kafka's, in one file.

De-duplication entries live in the same file, so admitting an event and
appending it are one transaction: exact, even under concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import msgspec

from omni import metrics
from schemas.envelope import Envelope, Headers, encode
from schemas.topics import Topics, partition_for
from streams.log import LogRecord, LogUnavailable, Outgoing, outgoing

# `headers`: the record's Kafka headers, a MessagePack array of [name, value] pairs (NULL: none).
# Logs made before it existed gain the column on start; their rows keep NULL, as their records
# on Kafka have no headers either.
# `records` is a rowid table with its key in an index of its own, not a WITHOUT ROWID table: in the
# latter each row is a key of the tree, whole, in the interior pages too, so rows of 500 to 900 bytes
# left a few per page and a deep tree to rebalance on every append; sealed events (README, "GDPR":
# 700 bytes against 440) were admitted at 0.55 of plain events' rate, about 0.8 since. Logs made
# before keep their WITHOUT ROWID table, which the same statements read and write.
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    key TEXT NOT NULL, value BLOB NOT NULL, appended_ms INTEGER NOT NULL, headers BLOB,
    UNIQUE (topic, partition, "offset"));
CREATE TABLE IF NOT EXISTS heads (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedupe (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, source_id TEXT NOT NULL, keep_until INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, source, source_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe (keep_until);
"""

log = logging.getLogger(__name__)
PURGE_EVERY_SECONDS = 60.0
# The WAL is copied back into the database (checkpointed) by a thread of its own, on a connection of
# its own, each time this many bytes of records were appended: SQLite's own automatic checkpoint
# runs inside the commit that crosses its threshold, holding the log's lock (appends and the
# runner's reads wait) for work that grows with the bytes appended (README, "GDPR": sealed events,
# 700 bytes against 440, paid it 1.6 times as often). SQLite's own stays as a backstop, further out.
CHECKPOINT_EVERY_BYTES = 4 * 1024 * 1024
BACKSTOP_CHECKPOINT_PAGES = 16384  # 64 MiB of 4 KiB pages: reached only if the checkpointer falls behind
T = TypeVar("T")

_pack_headers = msgspec.msgpack.Encoder().encode
_unpack_headers = msgspec.msgpack.Decoder(tuple[tuple[str, bytes], ...]).decode


def _packed(headers: Headers) -> bytes | None:
    return _pack_headers(headers) if headers else None


def _unpacked(blob: bytes | None) -> Headers:
    return _unpack_headers(blob) if blob else ()


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a log made by an earlier version up to SCHEMA: records gain their headers."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(records)")}
    if "headers" not in columns:
        try:
            db.execute("ALTER TABLE records ADD COLUMN headers BLOB")
        except sqlite3.OperationalError as failure:  # another process starting on the same file added it first
            if "duplicate column" not in str(failure):
                raise


def rollback(db: sqlite3.Connection) -> None:
    """End a failed transaction. SQLite rolls one back by itself on some errors (a full disk, an I/O
    error): a ROLLBACK then fails with "no transaction is active" and hides the error that matters."""
    if db.in_transaction:
        db.execute("ROLLBACK")


@dataclass(frozen=True, slots=True)
class _Request:
    """One caller's part of a group commit."""

    envelopes: Sequence[Envelope]
    values: Sequence[bytes]  # each envelope's wire form
    keep_until: Sequence[datetime]
    done: asyncio.Future[list[bool]]


def _of_the_log(failure: BaseException) -> bool:
    """Whether a failed commit failed for a reason of the log's own (closed, locked, out of space,
    I/O), which every request would meet again alone, rather than for one request's content."""
    return isinstance(failure, LogUnavailable) and (
        failure.__cause__ is None or isinstance(failure.__cause__, sqlite3.OperationalError)
    )


def _succeed(done: asyncio.Future[list[bool]], accepted: list[bool]) -> None:
    if not done.done():  # cancelled meanwhile: its caller is gone, and its events are committed anyway
        done.set_result(accepted)


def _fail(done: asyncio.Future[list[bool]], failure: BaseException) -> None:
    if not done.done():
        done.set_exception(failure)


class EmbeddedLog:
    """The log for embedded mode. Also the UsageSink there."""

    def __init__(self, path: Path, topics: Topics) -> None:
        self.path = path
        self.topics = topics
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._last_purge = 0.0
        self._waiting: list[_Request] = []
        self._committer: asyncio.Task[None] | None = None
        self.appended = asyncio.Event()  # wakes the in-process runner
        self._unchecked_bytes = 0  # appended since the checkpointer was last woken
        self._checkpoint_due = threading.Event()
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a 202 means the event survives a power cut
        db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
        db.executescript(SCHEMA)
        _migrate(db)
        self._db = db
        self._closing.clear()
        self._checkpointer = threading.Thread(target=self._checkpoint_when_due, name="embedded-log-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_when_due(self) -> None:
        """Copy the WAL back into the database whenever enough was appended (PASSIVE: never waits
        for, nor blocks, appends and reads; what a reader still needs is copied next time)."""
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.execute("PRAGMA synchronous=FULL")
            while True:
                self._checkpoint_due.wait()
                if self._closing.is_set():
                    return
                self._checkpoint_due.clear()
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as failure:  # the next one, or SQLite's backstop, does it
                    log.warning("embedded log checkpoint failed: %s", failure)
        finally:
            db.close()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._closing.set()
            self._checkpoint_due.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._db is not None:
            with self._lock:
                self._db.close()
            self._db = None

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def append(self, topic: str, items: Sequence[Outgoing]) -> None:
        await self._run(lambda db: self._write(db, topic, list(items)))
        self.appended.set()

    async def ingest(
        self, envelopes: Sequence[Envelope], keep_until: Sequence[datetime], values: Sequence[bytes] | None = None
    ) -> list[bool]:
        """Group commit: requests arriving while a commit is under way share the next one (one fsync).

        Nothing a request brings can fail another one: its envelopes are encoded here, in its own
        task, before it joins a group (when the caller has not encoded them already), and a group
        that fails for any reason but the log's own (see _of_the_log) is committed again request by
        request, so that only a request that fails alone fails (say, one whose key SQLite cannot bind).
        """
        if len(keep_until) != len(envelopes) or (values is not None and len(values) != len(envelopes)):
            raise ValueError("one keep_until and one value per envelope")
        if values is None:
            values = [encode(envelope) for envelope in envelopes]
        done: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(envelopes, values, keep_until, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_waiting())
        return await done

    async def _commit_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                results = await self._run(lambda db: self._ingest(db, group))  # noqa: B023 - awaited at once
            except Exception as failure:  # nothing of the group was committed
                if len(group) == 1 or _of_the_log(failure):
                    for request in group:
                        _fail(request.done, failure)
                    continue
                for request in group:  # one by one: only a request that fails alone fails
                    try:
                        [accepted] = await self._run(lambda db: self._ingest(db, [request]))  # noqa: B023
                    except Exception as own:
                        _fail(request.done, own)
                    else:
                        _succeed(request.done, accepted)
                        if any(accepted):
                            self.appended.set()
                continue
            for request, accepted in zip(group, results, strict=True):
                _succeed(request.done, accepted)
            if any(any(accepted) for accepted in results):
                self.appended.set()

    async def read(self, topic: str, partition: int, start: int, limit: int) -> list[LogRecord]:
        rows = await self._run(
            lambda db: db.execute(
                'SELECT "offset", key, value, headers FROM records WHERE topic=? AND partition=? AND "offset">=? '
                'ORDER BY "offset" LIMIT ?',
                (topic, partition, start, limit),
            ).fetchall()
        )
        return [LogRecord(topic, partition, offset, key, value, _unpacked(headers)) for offset, key, value, headers in rows]

    async def end_offsets(self, topic: str) -> dict[int, int]:
        rows = await self._run(
            lambda db: db.execute("SELECT partition, next_offset FROM heads WHERE topic=?", (topic,)).fetchall()
        )
        ends = {p: 0 for p in range(self.topics.partitions(topic))}
        ends.update(dict(rows))
        return ends

    async def _run(self, work):  # type: ignore[no-untyped-def]
        return await asyncio.to_thread(self.run_locked, work)

    def run_locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on the log's connection, alone (blocking: other users of the file wait). For what
        must commit with the log's records in one transaction, such as the quota ledger's."""
        if self._db is None:
            raise LogUnavailable("the embedded log is closed")
        try:
            with self._lock:
                return work(self._db)
        except sqlite3.Error as failure:
            raise LogUnavailable(f"the embedded log failed: {failure}") from failure

    def append_rows(self, db: sqlite3.Connection, topic: str, items: list[Outgoing]) -> None:
        """Append inside a transaction `run_locked` holds (see `_append_rows`)."""
        self._append_rows(db, topic, items)

    def _write(self, db: sqlite3.Connection, topic: str, items: list[Outgoing]) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            self._append_rows(db, topic, items)
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise

    def _ingest(self, db: sqlite3.Connection, requests: Sequence[_Request]) -> list[list[bool]]:
        """Admit several requests' events in one transaction, in arrival order."""
        now = time.time()
        purge = now - self._last_purge > PURGE_EVERY_SECONDS
        db.execute("BEGIN IMMEDIATE")
        try:
            if purge:
                db.execute("DELETE FROM dedupe WHERE keep_until < ?", (int(now),))
            first: dict[tuple[str, str, str], int] = {}
            for request in requests:
                for envelope, until in zip(request.envelopes, request.keep_until, strict=True):
                    first.setdefault(envelope.dedupe_key, int(until.timestamp()))
            unclaimed = self._claim(db, first)
            results: list[list[bool]] = []
            fresh: list[Outgoing] = []
            for request in requests:
                accepted: list[bool] = []
                for envelope, value in zip(request.envelopes, request.values, strict=True):
                    key = envelope.dedupe_key
                    new = key in unclaimed
                    accepted.append(new)
                    if new:
                        unclaimed.discard(key)  # a later copy, in this request or another, is a duplicate
                        fresh.append(outgoing(envelope.tenant_id, envelope, value))
                results.append(accepted)
            self._append_rows(db, self.topics.usage, fresh)
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        if purge:
            self._last_purge = now
        return results

    @staticmethod
    def _claim(db: sqlite3.Connection, keep_until: dict[tuple[str, str, str], int]) -> set[tuple[str, str, str]]:
        """Insert every key not yet seen; return those that were new (RETURNING gives only inserted rows)."""
        fresh: set[tuple[str, str, str]] = set()
        keys = list(keep_until)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = db.execute(
                "INSERT INTO dedupe VALUES " + ", ".join("(?, ?, ?, ?)" for _ in chunk) + " ON CONFLICT DO NOTHING "
                "RETURNING tenant_id, source, source_id",
                [part for key in chunk for part in (*key, keep_until[key])],
            ).fetchall()
            fresh.update((t, s, i) for t, s, i in rows)
        return fresh

    def _append_rows(self, db: sqlite3.Connection, topic: str, items: list[Outgoing]) -> None:
        if not items:
            return
        partitions = self.topics.partitions(topic)
        by_partition: dict[int, list[Outgoing]] = defaultdict(list)
        for item in items:
            by_partition[partition_for(item.key, partitions)].append(item)
        now_ms = int(time.time() * 1000)
        metrics.labelled(metrics.PRODUCED, topic).inc(len(items))  # (counted at the append; a rolled-back one is rare)
        for partition, batch in by_partition.items():
            row = db.execute("SELECT next_offset FROM heads WHERE topic=? AND partition=?", (topic, partition)).fetchone()
            first = row[0] if row else 0
            db.executemany(
                'INSERT INTO records (topic, partition, "offset", key, value, appended_ms, headers) VALUES (?, ?, ?, ?, ?, ?, ?)',
                [
                    (topic, partition, first + i, item.key, item.value, now_ms, _packed(item.headers))
                    for i, item in enumerate(batch)
                ],
            )
            db.execute(
                "INSERT INTO heads VALUES (?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET next_offset=excluded.next_offset",
                (topic, partition, first + len(batch)),
            )
        # Counted before the commit: a rolled-back append only wakes the checkpointer a little early.
        self._unchecked_bytes += sum(len(item.value) for item in items)
        if self._unchecked_bytes >= CHECKPOINT_EVERY_BYTES:
            self._unchecked_bytes = 0
            self._checkpoint_due.set()
