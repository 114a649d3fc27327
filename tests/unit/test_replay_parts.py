"""The pure parts of replays: which projections there are, what a request may be, the log's cut at a moment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.envelope import Envelope, encode
from schemas.meters import WindowSize
from schemas.replays import ProjectionName
from schemas.topics import Topics
from stores import shadow
from streams.log import LogRecord
from streams.replay import Appending, BadReplay, Mode, ReadOnlyLog, Request

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_api_names_every_projection_and_each_projection_its_folds() -> None:
    assert {p.value for p in ProjectionName} == set(shadow.PROJECTIONS)
    assert [f.name for f in shadow.folds_of(shadow.chosen(["quotas"]))] == ["catalog", "meters"]
    assert [p.name for p in shadow.chosen([])] == list(shadow.PROJECTIONS)
    tables = [t for fold in shadow.FOLDS.values() for t in fold.tables]
    assert len(tables) == len(set(tables)), "each table belongs to one fold"
    with pytest.raises(shadow.UnknownProjection, match="'nope'"):
        shadow.chosen(["meters", "nope"])


def test_requests_that_cannot_be_are_refused() -> None:
    now = T0
    assert Request(("meters",), Mode.DIFF, until=now).check(now)
    with pytest.raises(BadReplay, match="future"):
        Request(until=now + timedelta(seconds=1)).check(now)
    with pytest.raises(BadReplay, match="swapped"):
        Request(mode=Mode.SWAP, until=now - timedelta(days=1)).check(now)
    with pytest.raises(BadReplay, match="time zone"):
        Request(until=datetime(2025, 1, 1)).check(now)


class _Log:
    def __init__(self, records: list[LogRecord]) -> None:
        self.topics = Topics(prefix="t")
        self.records = records

    async def read(self, topic: str, partition: int, start: int, limit: int) -> list[LogRecord]:
        return [r for r in self.records if r.offset >= start][:limit]

    async def end_offsets(self, topic: str) -> dict[int, int]:
        return {0: len(self.records)}


def _record(offset: int, recorded: datetime, value: Any = None) -> LogRecord:
    envelope = Envelope(
        id=f"e{offset}", type="t", tenant_id="a", source="s", source_id=f"{offset}", event_time=T0, recorded_time=recorded
    )
    return LogRecord("t.usage", 0, offset, "a", encode(envelope) if value is None else value)


async def test_a_replay_until_a_moment_reads_each_partition_up_to_its_first_later_record() -> None:
    records = [_record(0, T0), _record(1, T0 + timedelta(seconds=1), b"not json"), _record(2, T0 + timedelta(seconds=1))]
    records += [_record(3, T0 + timedelta(seconds=2)), _record(4, T0)]
    log = ReadOnlyLog(_Log(records), until=T0 + timedelta(seconds=1))  # type: ignore[arg-type]
    assert [r.offset for r in await log.read("t.usage", 0, 0, 2)] == [0, 1]  # an unreadable record is the folds' to judge
    assert [r.offset for r in await log.read("t.usage", 0, 2, 10)] == [2]  # cut at 3, recorded after
    assert await log.read("t.usage", 0, 3, 10) == [] and await log.read("t.usage", 0, 4, 10) == []
    assert await log.end_offsets("t.usage") == {0: 3}
    unbounded = ReadOnlyLog(_Log(records))  # type: ignore[arg-type]
    assert len(await unbounded.read("t.usage", 0, 0, 10)) == 5
    with pytest.raises(Appending):
        await unbounded.append("t.usage", [])


class _Partitioned:
    """A log of 4 partitions per topic that remembers which partitions were read."""

    def __init__(self, records: list[LogRecord]) -> None:
        self.topics = Topics(prefix="t")
        self.records = records
        self.read_from: set[tuple[str, int]] = set()

    async def read(self, topic: str, partition: int, start: int, limit: int) -> list[LogRecord]:
        self.read_from.add((topic, partition))
        mine = [r for r in self.records if r.topic == topic and r.partition == partition and r.offset >= start]
        return mine[:limit]

    async def end_offsets(self, topic: str) -> dict[int, int]:
        ends = {p: 0 for p in range(4)}
        for r in self.records:
            if r.topic == topic:
                ends[r.partition] = max(ends[r.partition], r.offset + 1)
        return ends


async def test_a_meter_as_of_reads_only_the_tenants_partition_and_folds_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tenant's `?as_of=` must not hold the event loop (every other tenant's requests) while it
    folds, nor cost in proportion to other tenants' records (found holding a GET of another
    tenant's for 5.7 s over 200,000 records)."""
    from schemas.meters import Aggregation, MeterDefinition
    from schemas.topics import partition_for
    from stores import views
    from streams import replay

    topics = Topics(prefix="t")
    mine = "tenant-a"
    own = partition_for(mine, 4)
    other = next(t for t in (f"tenant-{i}" for i in range(100)) if partition_for(t, 4) != own)

    def record(tenant: str, offset: int, tokens: int, topic: str = topics.usage) -> LogRecord:
        envelope = Envelope(
            id=f"{tenant}{offset}", type="inference", tenant_id=tenant, source="s", source_id=f"{topic}{offset}",
            event_time=T0, recorded_time=T0, data={"tokens": tokens},
        )  # fmt: skip
        return LogRecord(topic, partition_for(tenant, 4), offset, tenant, encode(envelope))

    records = [record(mine, 0, 5), record(mine, 1, 7), record(other, 0, 1000), record(mine, 0, 11, topics.api_calls)]
    log = _Partitioned(records)
    on_loop: list[bool] = []
    decode = replay.decode

    def watched(value: bytes) -> Envelope:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop.append(False)
        else:
            on_loop.append(True)
        return decode(value)

    monkeypatch.setattr(replay, "decode", watched)
    meter = MeterDefinition(slug="tokens", event_type="inference", aggregation=Aggregation.SUM, value_property="$.data.tokens")
    db = await replay.meter_as_of(log, meter, mine, T0 + timedelta(seconds=1))  # type: ignore[arg-type]
    try:
        with db.transaction() as tx:
            [row] = views.query_meter(
                tx, mine, meter, start=None, end=None, window_size=None, group_by=[], by_subject=False, subjects=[]
            )
    finally:
        db.close()
    assert row.value == 23
    assert on_loop == [False, False, False], "each of the tenant's records decoded in a worker thread"
    assert log.read_from == {(topics.usage, own), (topics.api_calls, own)}


async def test_a_meter_as_of_merges_its_buckets_a_page_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """merge_buckets sorts what it is given, holding the GIL (so the event loop) while it sorts: one
    call with a tenant's every bucket (50,000 subjects) held the loop for half a second. Pages of
    buckets merged one after another give the same hours, days and totals."""
    from schemas.meters import Aggregation, MeterDefinition
    from schemas.topics import partition_for
    from stores import views
    from streams import replay

    topics = Topics(prefix="t")
    mine = "tenant-a"

    def record(offset: int, minute: int) -> LogRecord:
        envelope = Envelope(
            id=f"{offset}", type="inference", tenant_id=mine, source="s", source_id=f"{offset}",
            event_time=T0 + timedelta(minutes=minute), recorded_time=T0, data={"tokens": offset + 1}, subject=f"u{offset % 3}",
        )  # fmt: skip
        return LogRecord(topics.usage, partition_for(mine, 4), offset, mine, encode(envelope))

    log = _Partitioned([record(i, i * 7) for i in range(20)])  # 20 minute buckets over 2 hours and 3 subjects
    merged: list[int] = []
    merge = views.merge_buckets

    def counted(tx: Any, deltas: Any) -> None:
        merged.append(len(deltas))
        merge(tx, deltas)

    monkeypatch.setattr(views, "merge_buckets", counted)
    monkeypatch.setattr(replay, "AS_OF_PAGE", 3)
    meter = MeterDefinition(slug="tokens", event_type="inference", aggregation=Aggregation.SUM, value_property="$.data.tokens")
    db = await replay.meter_as_of(log, meter, mine, T0 + timedelta(seconds=1))  # type: ignore[arg-type]
    try:
        with db.transaction() as tx:
            hours = views.query_meter(
                tx, mine, meter, start=None, end=None, window_size=WindowSize.HOUR, group_by=[], by_subject=True, subjects=[]
            )
            [total] = views.query_meter(
                tx, mine, meter, start=None, end=None, window_size=None, group_by=[], by_subject=False, subjects=[]
            )
    finally:
        db.close()
    assert max(merged) <= 3 and sum(merged) == 20
    assert total.value == sum(range(1, 21))
    expected: dict[tuple[int, str], int] = {}
    for i in range(20):
        key = (i * 7 // 60, f"u{i % 3}")
        expected[key] = expected.get(key, 0) + i + 1
    assert {(int((r.window_start - T0).total_seconds()) // 3600, r.subject): r.value for r in hours} == expected
