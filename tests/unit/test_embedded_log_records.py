"""The embedded log keeps each record's headers as Kafka does, and a log made before it did
(no `headers` column) is migrated on start with its records unchanged."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from schemas.envelope import Actor, Envelope, decode, encode
from schemas.topics import Topics, partition_for
from streams.embedded_log import CHECKPOINT_EVERY_BYTES, EmbeddedLog
from streams.log import LogRecord, Outgoing
from tests.topic_records import assert_readable_by_outsiders
from tests.unit.test_envelope_decoding import LAYOUT_1

TOPICS = Topics(prefix="t", usage_partitions=2)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# The table as every version before record headers made it.
OLD_RECORDS = """
CREATE TABLE records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    key TEXT NOT NULL, value BLOB NOT NULL, appended_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")) WITHOUT ROWID;
CREATE TABLE heads (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)) WITHOUT ROWID;
"""


def envelope(source_id: str, traceparent: str | None = None) -> Envelope:
    now = datetime.now(UTC)
    return Envelope(
        id=f"o-{source_id}", type="inference", tenant_id="t-1", source="gw", source_id=source_id, event_time=now,
        recorded_time=now, subject="u", data={"tokens": 1}, actor=Actor("k-1"), traceparent=traceparent,
    )  # fmt: skip


async def test_ingested_records_carry_their_headers_and_the_sdk_reads_them(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite", TOPICS)
    await log.start()
    try:
        envelopes = [envelope("plain"), envelope("traced", TRACEPARENT)]
        until = [e.event_time for e in envelopes]
        assert await log.ingest(envelopes, until) == [True, True]
        [one, two] = await log.read(TOPICS.usage, partition_for("t-1", 2), 0, 10)
        assert one.headers == (("content-type", b"application/cloudevents+json"),)
        assert two.headers == (*one.headers, ("traceparent", TRACEPARENT.encode()))
        for record, sent in zip((one, two), envelopes, strict=True):
            assert assert_readable_by_outsiders(record.headers, record.key, record.value) == sent
        await log.append(TOPICS.audit, [Outgoing("k", b"v"), Outgoing("k", b"w", (("a", b""), ("a", b"\x00\xff")))])
        records = await log.read(TOPICS.audit, partition_for("k", 2), 0, 10)
        assert [r.headers for r in records] == [(), (("a", b""), ("a", b"\x00\xff"))]  # any bytes, in order, repeats kept
    finally:
        await log.close()


async def test_a_log_made_before_headers_is_migrated_and_its_records_still_read(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    old = sqlite3.connect(path)
    old.executescript(OLD_RECORDS)
    partition = partition_for("t-1", 2)
    old.execute("INSERT INTO records VALUES (?, ?, 0, 't-1', ?, 0)", (TOPICS.usage, partition, LAYOUT_1))
    old.execute("INSERT INTO heads VALUES (?, ?, 1)", (TOPICS.usage, partition))
    old.commit()
    old.close()

    log = EmbeddedLog(path, TOPICS)
    await log.start()
    try:
        new = envelope("after-the-upgrade")
        assert await log.ingest([new], [new.event_time], [encode(new)]) == [True]
        before, after = await log.read(TOPICS.usage, partition, 0, 10)
        assert before == LogRecord(TOPICS.usage, partition, 0, "t-1", LAYOUT_1, ())
        assert decode(before.value).source_id == "e-1"
        assert after.offset == 1 and decode(after.value) == new and after.headers
    finally:
        await log.close()
    again = EmbeddedLog(path, TOPICS)  # the next start finds the column there
    await again.start()
    try:
        assert len(await again.read(TOPICS.usage, partition, 0, 10)) == 2
    finally:
        await again.close()


async def test_the_wal_is_checkpointed_by_a_thread_of_its_own_as_records_are_appended(tmp_path: Path) -> None:
    """Every CHECKPOINT_EVERY_BYTES appended wake the checkpointer, which copies the WAL into the
    database file on its own connection (SQLite's own checkpoint is 64 MiB out: the database file
    would stay at its first pages); closing the log stops the thread."""
    path = tmp_path / "log.sqlite"
    others = {t for t in threading.enumerate() if t.name == "embedded-log-checkpoint"}  # other tests' logs
    log = EmbeddedLog(path, TOPICS)
    await log.start()
    [own] = {t for t in threading.enumerate() if t.name == "embedded-log-checkpoint"} - others
    try:
        empty = path.stat().st_size
        value = b"x" * 4000
        for _ in range(2):  # twice the threshold, in appends below it
            await log.append(TOPICS.audit, [Outgoing(f"k{i}", value) for i in range(CHECKPOINT_EVERY_BYTES // 8000 + 1)])
            assert await log.read(TOPICS.audit, partition_for("k0", 2), 0, 1)  # reads go on meanwhile
        deadline = time.monotonic() + 30
        while path.stat().st_size < empty + CHECKPOINT_EVERY_BYTES // 2:
            assert time.monotonic() < deadline, "the WAL was never checkpointed into the database file"
            await asyncio.sleep(0.01)
    finally:
        await log.close()
    assert not own.is_alive()
    with sqlite3.connect(path) as db:  # everything appended is there
        assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 2 * (CHECKPOINT_EVERY_BYTES // 8000 + 1)
