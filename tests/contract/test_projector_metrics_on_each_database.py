"""omni_dead_letters_total and omni_log_holes_total count exactly, on SQLite and on PostgreSQL:
each dead letter and each hole once, however often its records are delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from schemas.envelope import Envelope, encode
from schemas.meters import MeterDefinition
from schemas.topics import Topics
from stores import views
from stores.database import Database
from streams.log import LogRecord
from streams.projectors import CatalogProjector, MeterProjector

TOPICS = Topics(prefix="m", usage_partitions=1)
START = datetime(2026, 11, 1, tzinfo=UTC)
COUNT = MeterDefinition(slug="count", event_type="inference", aggregation="COUNT")
LATE = MeterDefinition(slug="late", event_type="inference", aggregation="COUNT")


def record(offset: int, value: bytes | None = None, topic: str = TOPICS.usage) -> LogRecord:
    """A usage event at `offset`, or `value` there instead (an unreadable record)."""
    if value is None:
        moment = START + timedelta(seconds=offset)
        envelope = Envelope(
            id=f"id-{offset}",
            type="inference",
            tenant_id="t1",
            source="gw",
            source_id=f"e{offset}",
            event_time=moment,
            recorded_time=moment,
            subject="u",
            data={"tokens": 1},
        )
        value = encode(envelope)
    return LogRecord(topic, 0, offset, "t1", value)


def unreadable(offset: int, topic: str = TOPICS.usage) -> LogRecord:
    return record(offset, b"\x00 not an envelope", topic)


def define(db: Database, *meters: MeterDefinition) -> None:
    with db.transaction() as tx:
        for meter in meters:
            views.add_meter_definition(tx, "_platform", meter, f"def-{meter.slug}")


def count(db: Database, slug: str = "count") -> int:
    with db.transaction() as tx:
        return sum(b.state.count for b in views.buckets(tx, "t1", slug, None, None, []))


def dead_letters(consumer: str) -> float:
    return REGISTRY.get_sample_value("omni_dead_letters_total", {"consumer": consumer}) or 0.0


def holes() -> float:
    return REGISTRY.get_sample_value("omni_log_holes_total") or 0.0


def projector(db: Database) -> MeterProjector:
    return MeterProjector(db, TOPICS, keep_seen=timedelta(days=8))


def test_each_dead_letter_counts_once_however_often_it_is_delivered(database: Database) -> None:
    define(database, COUNT)
    meters = projector(database)
    records = [record(i) for i in range(12)]
    records[3], records[8] = unreadable(3), record(8, record(8).value.replace(b'"u"', b'"u\\u0000"'))  # garbage, a NUL
    before = dead_letters("meters")
    meters.process(0, records[:6])
    assert dead_letters("meters") == before + 1
    meters.process(0, records)  # redelivered from the start, with the rest
    meters.process(0, records[2:])  # and again
    assert dead_letters("meters") == before + 2
    define(database, LATE)  # a late meter's catch-up reads past both, and counts neither again
    for lag in meters.lagging():
        meters.catch_up(lag, records[lag.start : lag.end])
    assert dead_letters("meters") == before + 2
    assert (count(database), count(database, "late")) == (10, 10)
    with database.transaction() as tx:
        assert [offset for _, offset, _, _ in views.dead_letters(tx, TOPICS.usage)] == [3, 8]


def test_dead_letters_are_counted_per_consumer(database: Database) -> None:
    catalog = CatalogProjector(database, TOPICS)
    before = dead_letters("catalog"), dead_letters("meters")
    catalog.process(0, [unreadable(0, TOPICS.control), unreadable(1, TOPICS.control)])
    catalog.process(0, [unreadable(0, TOPICS.control), unreadable(1, TOPICS.control)])
    assert (dead_letters("catalog"), dead_letters("meters")) == (before[0] + 2, before[1])


def test_each_hole_in_the_log_counts_once(database: Database) -> None:
    define(database, COUNT)
    meters = projector(database)
    before = holes()
    meters.process(0, [record(i) for i in range(5)])
    assert holes() == before
    meters.process(0, [record(i) for i in (7, 8, 9)])  # 5 and 6 never made it to the log
    assert holes() == before + 1
    meters.process(0, [record(i) for i in (7, 8, 9, 10)])  # redelivered: the hole is behind the views
    meters.process(0, [record(i) for i in (11, 12)])
    assert holes() == before + 1
    meters.process(0, [record(i) for i in (20, 21)])  # a second hole, 13..19
    assert holes() == before + 2
    define(database, LATE)
    for lag in meters.lagging():
        meters.catch_up(lag, [r for r in (record(i) for i in (*range(5), 7, 8, 9, 10, 11, 12, 20, 21)) if r.offset >= lag.start])
    assert holes() == before + 2
    assert (count(database), count(database, "late")) == (13, 13)


def test_a_batch_retried_after_a_failure_counts_its_dead_letters_and_hole_once(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    define(database, COUNT)
    meters = projector(database)
    meters.process(0, [record(0)])
    batch = [record(3), unreadable(4), record(5)]  # after a hole (1, 2), with a dead letter
    before = holes(), dead_letters("meters")

    def outage(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database went away mid-batch")

    monkeypatch.setattr(views, "merge_buckets", outage)
    with pytest.raises(RuntimeError):
        meters.process(0, batch)
    monkeypatch.undo()
    meters.process(0, batch)  # the retry commits
    with database.transaction() as tx:
        assert [offset for _, offset, _, _ in views.dead_letters(tx, TOPICS.usage)] == [4]
    assert (holes(), dead_letters("meters")) == (before[0] + 1, before[1] + 1)


def test_a_hole_inside_a_batch_counts_too(database: Database) -> None:
    define(database, COUNT)
    before = holes()
    projector(database).process(0, [record(i) for i in (0, 1, 2, 5, 6)])  # 3 and 4 are missing
    assert count(database) == 5
    assert holes() == before + 1


def test_two_holes_inside_one_batch_count_two(database: Database) -> None:
    define(database, COUNT)
    before = holes()
    projector(database).process(0, [record(i) for i in (0, 2, 3, 5)])  # 1 and 4 are missing
    assert count(database) == 4
    assert holes() == before + 2


def projected(projector_name: str) -> float:
    return REGISTRY.get_sample_value("omni_projected_records_total", {"projector": projector_name}) or 0.0


def test_records_applied_are_counted_once_per_projector(database: Database) -> None:
    define(database, COUNT)
    meters, catalog = projector(database), CatalogProjector(database, TOPICS)
    before = projected("meters"), projected("catalog")
    meters.process(0, [record(i) for i in range(6)])
    meters.process(0, [record(i) for i in range(10)])  # 0..5 redelivered: only 6..9 are applied
    catalog.process(0, [unreadable(0, TOPICS.control)])  # dead-lettered: applied all the same
    assert (projected("meters"), projected("catalog")) == (before[0] + 10, before[1] + 1)


def test_a_hole_in_the_control_topic_counts_too(database: Database) -> None:
    catalog = CatalogProjector(database, TOPICS)
    before = holes()
    catalog.process(0, [unreadable(0, TOPICS.control), unreadable(2, TOPICS.control)])  # 1 is missing
    assert holes() == before + 1
