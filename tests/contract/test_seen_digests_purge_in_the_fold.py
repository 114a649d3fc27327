"""The meter fold forgets seen events once they can no longer be admitted: every
PURGE_EVERY_BATCHES batches, by the log's own recording clock (so a replay purges alike), and
only digests past their keep_until (event time + keep_seen)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.envelope import Envelope, encode
from schemas.topics import Topics
from stores.database import Database
from streams.log import LogRecord
from streams.projectors import MeterProjector

TOPICS = Topics(prefix="purge", usage_partitions=1)
START = datetime(2026, 11, 1, tzinfo=UTC)


def record(offset: int, moment: datetime) -> LogRecord:
    envelope = Envelope(
        id=f"id-{offset}", type="call", tenant_id="t1", source="gw", source_id=f"e{offset}", event_time=moment,
        recorded_time=moment,
    )  # fmt: skip
    return LogRecord(TOPICS.usage, 0, offset, "t1", encode(envelope))


def seen(db: Database) -> int:
    with db.transaction() as tx:
        return tx.execute("SELECT count(*) FROM seen_digests")[0][0]


def test_seen_events_past_their_keep_until_are_purged_every_few_batches(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streams.projectors.PURGE_EVERY_BATCHES", 3)
    meters = MeterProjector(database, TOPICS, keep_seen=timedelta(days=1))
    meters.process(0, [record(0, START), record(1, START)])  # kept until START + 1 day
    meters.process(0, [record(2, START + timedelta(days=2))])  # kept until START + 3 days
    assert seen(database) == 3  # the second batch: no purge yet
    meters.process(0, [record(3, START + timedelta(days=2, hours=12))])  # the third: purged by its recording time
    assert seen(database) == 2  # the first two were past their keep_until; the others are not
    meters.process(0, [record(4, START + timedelta(days=9))])
    assert seen(database) == 3  # not again before the sixth batch
