"""Meter queries over the typed, rolled-up buckets give exactly what the raw events give when
aggregated the plain way (tests/truth.py, none of the code under test), on SQLite and on
PostgreSQL alike; and the roll-up rows equal the minute rows combined. Also: a database with the version 1 bucket tables is migrated
by rebuilding the meters from the log."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from projections.meters import DAY, HOUR, MINUTE, BucketKey, coarser, totals
from schemas.envelope import Envelope, decode, encode
from schemas.meters import Aggregation, MeterDefinition, WindowSize
from schemas.topics import Topics
from stores import views
from stores.database import Database
from streams.log import LogRecord
from streams.projectors import MeterProjector
from tests import truth

TOPICS = Topics(prefix="q", usage_partitions=1)
# Two days either side of a month end, so MONTH windows split.
START = datetime(2026, 1, 30, 22, 0, tzinfo=UTC)
GROUPS = {"model": "$.data.model", "region": "$.data.region"}
METERS = [
    MeterDefinition(
        slug=a.value.lower().replace("_", "-"),
        event_type="inference",
        aggregation=a,
        value_property=None if a is Aggregation.COUNT else "$.data.v",
        group_by=GROUPS,
    )
    for a in Aggregation
]
MODELS = ["a", "b", 1, 1.0, True, None, "x\u0000y", "é"]
VALUES: list[Any] = [
    1,
    7,
    -3,
    "0.000000000000000001",
    "12345678901234567890.123456789012345678",
    "2.50",
    0.1,
    "1e3",
    None,
    "n/a",
    "x\u0000y",
]


def records(count: int, seed: int = 11, start: datetime = START) -> list[LogRecord]:
    rng = random.Random(seed)
    out = []
    for offset in range(count):
        moment = start + timedelta(seconds=rng.randrange(0, 2 * 86400), microseconds=rng.choice([0, 5]))
        data: dict[str, Any] = {"v": rng.choice(VALUES), "model": rng.choice(MODELS)}
        if rng.random() < 0.7:
            data["region"] = rng.choice(["eu", "us"])
        envelope = Envelope(
            id=f"id-{offset}", type="inference", tenant_id=rng.choice(["t1", "t1", "t2"]), source="gw",
            source_id=f"e{offset if rng.random() > 0.05 else offset // 2}",  # some duplicates on the log
            event_time=moment, recorded_time=moment, subject=rng.choice(["s1", "s2", "s3", None]), data=data,
        )  # fmt: skip
        out.append(LogRecord(TOPICS.usage, 0, offset, envelope.tenant_id, encode(envelope)))
    return out


def build(db: Database, log: list[LogRecord]) -> None:
    """Half the meters live from the start, half defined later and caught up; many batches."""
    early, late = METERS[::2], METERS[1::2]
    with db.transaction() as tx:
        for meter in early:
            views.add_meter_definition(tx, "_platform", meter, f"def-{meter.slug}")
    projector = MeterProjector(db, TOPICS, keep_seen=timedelta(days=30))
    for first in range(0, len(log) // 2, 97):
        projector.process(0, log[first : min(first + 97, len(log) // 2)])
    with db.transaction() as tx:
        for meter in late:
            views.add_meter_definition(tx, "_platform", meter, f"def-{meter.slug}")
    for first in range(len(log) // 2, len(log), 131):
        projector.process(0, log[first : first + 131])
        for lag in projector.lagging():
            projector.catch_up(lag, log[lag.start : min(lag.end, lag.start + 150)])
    while lags := projector.lagging():
        for lag in lags:
            projector.catch_up(lag, log[lag.start : min(lag.end, lag.start + 150)])


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


RANGES: list[tuple[datetime | None, datetime | None]] = [
    (None, None),
    (at(2026, 1, 31), at(2026, 2, 1)),  # whole days
    (at(2026, 1, 30, 23, 17), at(2026, 2, 1, 13, 41)),  # neither edge aligned to an hour
    (at(2026, 1, 31, 5), None),  # an hour, open-ended
    (None, at(2026, 2, 1, 0, 1)),
    (at(2026, 1, 31, 10, 15), at(2026, 1, 31, 10, 50)),  # inside one hour
]
SHAPES: list[dict[str, Any]] = [
    {"group_by": [], "by_subject": False, "subjects": []},
    {"group_by": ["model"], "by_subject": False, "subjects": []},
    {"group_by": ["region", "model"], "by_subject": True, "subjects": []},
    {"group_by": [], "by_subject": True, "subjects": ["s1"]},
    {"group_by": ["region"], "by_subject": False, "subjects": ["s2", ""]},
]
# Dimension filters (`filter_group_by[…]`), as the query string names values, each with a shape
# above, over the first two ranges (the truth scans every event per query: not all combinations).
FILTERED: list[tuple[int, dict[str, list[str]]]] = [
    (0, {"region": ["eu"]}),
    (1, {"model": ["1", "a"], "region": ["null", "us"]}),  # the number 1 (not 1.0), "a"; no region or "us"
    (2, {"model": ["true", "é", "nothing-such"]}),
    (4, {"region": ["us"], "model": ["b"]}),
]


# Under mutation testing (make mutation sets MUTANT_UNDER_TEST) a smaller log: the test runs for every
# mutant that survives the faster ones, and most of its time is the truth's, not the code's.
LOG_SIZE = 300 if os.environ.get("MUTANT_UNDER_TEST") else 1500


# The truth of each query, kept for the other database: it is most of these tests' time, and the
# same for both (each log is generated from its seed).
COUNTED: dict[str, list[tuple[int, Envelope]]] = {}  # by log
ANSWERS: dict[str, list[truth.Row]] = {}  # by log and query


def truth_of(log: list[LogRecord], meter: MeterDefinition, query: truth.Query) -> list[truth.Row]:
    of_log = repr((log[0].value, len(log)))
    if of_log not in COUNTED:
        COUNTED[of_log] = truth.counted((r.offset, decode(r.value)) for r in log)
    key = repr((of_log, meter.slug, query))
    if key not in ANSWERS:
        ANSWERS[key] = truth.answer_counted(COUNTED[of_log], "t1", meter, query)
    return ANSWERS[key]


def test_queries_equal_the_truth_computed_from_the_raw_events(database: Database) -> None:
    log = records(LOG_SIZE)
    build(database, log)
    checked = checked_filtered = 0
    for meter in METERS:
        for window_size in [None, *WindowSize]:
            for start, end in RANGES:
                filtered = [(SHAPES[i], asked) for i, asked in FILTERED] if (start, end) in RANGES[:2] else []
                for shape, asked in [*((shape, {}) for shape in SHAPES), *filtered]:
                    filters = views.dimension_filters(meter, asked)
                    with database.transaction() as tx:
                        got = views.query_meter(
                            tx, "t1", meter, start=start, end=end, window_size=window_size, filters=filters, **shape
                        )
                    query = truth.Query(start, end, window_size, shape["group_by"], shape["by_subject"], shape["subjects"], asked)
                    want = truth_of(log, meter, query)
                    assert truth.shown(got) == want, (meter.slug, window_size, start, end, shape, asked)
                    checked += bool(want)
                    checked_filtered += bool(want and asked)
    assert checked > LOG_SIZE * 2 // 3 and checked_filtered > LOG_SIZE // 8


# Windows in a time zone (`window_time_zone`): local hours, days and months, read from hour buckets
# where the zone's offsets are whole hours and from minutes where not (+05:30, +05:45), combined
# in Python on both databases. The first log crosses every zone's month end; the second, New
# York's change of clocks on 2026-03-08 (a day of 23 hours) and Adelaide's on 2026-04-05 (of 25).
ZONES = ["America/New_York", "Asia/Kolkata", "Asia/Kathmandu"]  # Adelaide (+10:30) has a log of its own
ZONED_RANGES: list[tuple[datetime | None, datetime | None]] = [(None, None), (at(2026, 1, 30, 23, 17), at(2026, 2, 1, 13, 41))]
CLOCKS_CHANGE = [
    (datetime(2026, 3, 7, 12, tzinfo=UTC), ["America/New_York"]),
    (datetime(2026, 4, 4, 6, tzinfo=UTC), ["Australia/Adelaide"]),
]


@pytest.mark.parametrize(
    "log_start", [START, *(start for start, _ in CLOCKS_CHANGE)], ids=["month-end", "new-york-dst", "adelaide-dst"]
)
def test_windows_of_a_time_zone_equal_the_truth(database: Database, log_start: datetime) -> None:
    from zoneinfo import ZoneInfo

    log = records(LOG_SIZE // 3, seed=5, start=log_start)
    build(database, log)
    zones = dict(CLOCKS_CHANGE).get(log_start, ZONES)
    ranges = ZONED_RANGES if log_start == START else [(None, None), (log_start + timedelta(hours=7, minutes=13), None)]
    checked = 0
    for meter in METERS:
        for window_size in (WindowSize.HOUR, WindowSize.DAY, WindowSize.MONTH):
            for zone in zones:
                for start, end in ranges:
                    for shape in (SHAPES[0], SHAPES[2]):
                        with database.transaction() as tx:
                            got = views.query_meter(
                                tx, "t1", meter, start=start, end=end, window_size=window_size, zone=ZoneInfo(zone), **shape
                            )
                        query = truth.Query(
                            start, end, window_size, shape["group_by"], shape["by_subject"], shape["subjects"], zone=zone
                        )
                        want = truth_of(log, meter, query)
                        assert truth.shown(got) == want, (meter.slug, window_size, zone, start, end, shape)
                        checked += bool(want)
    assert checked >= len(METERS) * 3 * len(zones) * len(ranges) * 2 * 3 // 4
    if log_start != START:  # the day the clocks change is there, and is not 24 hours long
        with database.transaction() as tx:
            days = views.query_meter(
                tx, "t1", METERS[0], start=None, end=None, window_size=WindowSize.DAY, zone=ZoneInfo(zones[0]), **SHAPES[0]
            )
        assert {row.window_end - row.window_start for row in days} >= {timedelta(hours=24)}
        assert {row.window_end - row.window_start for row in days} & {timedelta(hours=23), timedelta(hours=25)}


def test_roll_up_rows_are_the_minute_rows_combined(database: Database) -> None:
    build(database, records(800, seed=5))
    with database.transaction() as tx:
        for meter in METERS:
            for tenant in ("t1", "t2"):
                minutes = {
                    BucketKey(tenant, meter.slug, b.window_start, b.subject, b.group_key): b.state
                    for b in views.buckets(tx, tenant, meter.slug, None, None, [])
                }
                assert minutes
                for resolution in (MINUTE, HOUR, DAY):
                    expected = coarser(minutes, resolution) if resolution != MINUTE else minutes
                    stored = {
                        BucketKey(tenant, meter.slug, b.window_start, b.subject, b.group_key): b.state
                        for b in views.buckets(tx, tenant, meter.slug, None, None, [], resolution=resolution)
                    }
                    assert stored == expected
                    overall = {
                        b.window_start: b.state
                        for b in views.total_buckets(tx, tenant, meter.slug, None, None, resolution=resolution)
                    }
                    assert overall == {k.window_start: s for k, s in totals(expected).items()}


def test_a_query_with_no_data_has_no_rows(database: Database) -> None:
    with database.transaction() as tx:
        for meter in METERS:
            for window_size in (None, WindowSize.MONTH):
                assert views.query_meter(tx, "t1", meter, start=None, end=None, window_size=window_size, **SHAPES[0]) == []
                assert views.query_meter(tx, "t1", meter, start=None, end=None, window_size=window_size, **SHAPES[2]) == []


def test_exact_decimals_survive_both_databases(database: Database) -> None:
    meter = METERS[[m.aggregation for m in METERS].index(Aggregation.SUM)]
    with database.transaction() as tx:
        views.add_meter_definition(tx, "_platform", meter, "def")
    big = "99999999999999999999.999999999999999999"
    log = []
    for offset, value in enumerate([big, big, "0.000000000000000001", "-0.5"]):
        moment = START + timedelta(hours=offset * 13)
        envelope = Envelope(
            id=f"id-{offset}", type="inference", tenant_id="t1", source="gw", source_id=f"e{offset}",
            event_time=moment, recorded_time=moment, subject="s", data={"v": value, "model": "m"},
        )  # fmt: skip
        log.append(LogRecord(TOPICS.usage, 0, offset, "t1", encode(envelope)))
    projector = MeterProjector(database, TOPICS, keep_seen=timedelta(days=30))
    for record in log:
        projector.process(0, [record])
    with database.transaction() as tx:
        [row] = views.query_meter(tx, "t1", meter, start=None, end=None, window_size=WindowSize.MONTH, **SHAPES[0])[-1:]
        [whole] = views.query_meter(tx, "t1", meter, start=None, end=None, window_size=None, **SHAPES[0])
    assert whole.value == Decimal("199999999999999999999.499999999999999999")
    assert row.value == Decimal("-0.499999999999999999")  # February: the last two
    assert str(whole.value) == "199999999999999999999.499999999999999999"


# Version 1 of the schema: JSON states per minute bucket, meters' checkpoints in meter_checkpoints.
VERSION_1 = """
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (consumer, topic, partition));
CREATE TABLE IF NOT EXISTS meter_definitions (
    slug TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, body TEXT NOT NULL, event_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meter_checkpoints (
    meter TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (meter, topic, partition));
CREATE TABLE IF NOT EXISTS meter_buckets (
    tenant_id TEXT NOT NULL, meter TEXT NOT NULL, window_start BIGINT NOT NULL,
    subject TEXT NOT NULL, group_key TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (tenant_id, meter, window_start, subject, group_key));
CREATE TABLE IF NOT EXISTS seen_events (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, source_id TEXT NOT NULL, keep_until BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, source, source_id));
CREATE TABLE IF NOT EXISTS dropped_records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, record_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition, record_offset))
"""


@pytest.fixture
def version_1(database: Database) -> Database:
    """The fixture's database as version 1 left it: its meter tables replaced by the old ones."""
    with database.transaction() as tx:
        for table in ("meter_windows", "meter_totals", "meter_offsets"):
            tx.execute(f"DROP TABLE {table}")
    database.migrate(VERSION_1)
    return database


def test_version_1_views_are_rebuilt_from_the_log(version_1: Database) -> None:
    log = records(400, seed=3)
    count = METERS[[m.aggregation for m in METERS].index(Aggregation.COUNT)]
    with version_1.transaction() as tx:
        views.add_meter_definition(tx, "_platform", count, "def-count")
        # What version 1 had committed: everything folded, duplicates recorded as dropped.
        tx.execute("INSERT INTO checkpoints VALUES ('meters', ?, 0, 400)", (TOPICS.usage,))
        tx.execute("INSERT INTO meter_checkpoints VALUES ('count', ?, 0, 400)", (TOPICS.usage,))
        tx.execute("INSERT INTO meter_buckets VALUES ('t1', 'count', 0, '', '{}', '{\"n\": 999}')")
    fresh = MeterProjector(version_1, TOPICS, keep_seen=timedelta(days=30))
    # The first 400 records as version 1 saw them, to learn which were duplicates.
    with version_1.transaction() as tx:
        events = [(r, decode(r.value)) for r in log]
        seen: set[tuple[str, str, str]] = set()
        dropped = []
        for record, event in events:
            if event.dedupe_key in seen:
                dropped.append(record.offset)
            seen.add(event.dedupe_key)
        views.add_dropped(tx, TOPICS.usage, 0, dropped)
        tx.execute_many("INSERT INTO seen_events VALUES (?, ?, ?, ?)", [(*key, 2**40) for key in seen])

    version_1.migrate(views.SCHEMA)
    with version_1.transaction() as tx:
        tables = {"meter_buckets", "meter_checkpoints"} & {
            name for (name,) in tx.execute(
                "SELECT name FROM sqlite_master" if tx.dialect == "sqlite" else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }  # fmt: skip
    assert tables == set()
    with version_1.transaction() as tx:  # the de-duplication memory moved to seen_digests
        assert views.claim_events(tx, [(*key, 2**40) for key in seen]) == set()
    [lag] = fresh.lagging()
    assert (lag.meter, lag.start, lag.end) == ("count", 0, 400)
    while lags := fresh.lagging():
        for lag in lags:
            fresh.catch_up(lag, log[lag.start : min(lag.end, lag.start + 64)])
    with version_1.transaction() as tx:
        rows = views.query_meter(tx, "t1", count, start=None, end=None, window_size=None, **SHAPES[0])
        assert views.checkpoints(tx, "meters", TOPICS.usage) == {0: 400}
    expected = sum(1 for record, event in events if record.offset not in dropped and event.tenant_id == "t1")
    assert [r.value for r in rows] == [expected]
