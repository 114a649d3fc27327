"""The pure parts of replays: which projections there are, what a request may be, the log's cut at a moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.envelope import Envelope, encode
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
