"""Runs: a partition's fetched records as one Faust event, and the buffer between agent and fold."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import faust
import pytest
from faust.types import TP

from streams.faust_runs import RunBuffer, RunSchema, log_records, run_message
from streams.log import LogRecord


@dataclass(frozen=True)
class Fetched:
    """The fields of aiokafka's ConsumerRecord that runs use."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = b"tenant-a"
    value: bytes | None = b"{}"
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 1_700_000_000_000
    timestamp_type: int = 0
    serialized_value_size: int = 2


def run(partition: int, first: int, count: int) -> list[Fetched]:
    return [Fetched("usage", partition, offset) for offset in range(first, first + count)]


def test_a_runs_message_stands_at_its_last_offset_and_carries_every_record() -> None:
    records = run(3, 10, 5)
    message = run_message(TP("usage", 3), records, generation_id=7)
    assert (message.topic, message.partition, message.offset) == ("usage", 3, 14)
    assert message.value is records
    assert message.serialized_value_size == 10
    assert message.generation_id == 7
    assert message.timestamp == 1_700_000_000.0


def test_the_run_schema_hands_the_run_over_undecoded(tmp_path: object) -> None:
    app = faust.App("unit-runs", broker="kafka://127.0.0.1:1", datadir=str(tmp_path), web_enabled=False)
    records = run(0, 0, 3)
    message = run_message(TP("usage", 0), records, generation_id=1)
    event = asyncio.run(RunSchema().decode(app, message))
    assert event.value is records and event.key is None and event.message is message


def test_log_records_group_by_partition_in_offset_order_each_offset_once() -> None:
    runs = [run(1, 5, 3), run(0, 0, 2), run(1, 8, 2), run(1, 6, 4)]  # the last repeats 6..9 (a seek back)
    grouped = log_records(runs)
    assert sorted(grouped) == [0, 1]
    assert [r.offset for r in grouped[0]] == [0, 1]
    assert [r.offset for r in grouped[1]] == [5, 6, 7, 8, 9]
    assert grouped[1][0] == LogRecord("usage", 1, 5, "tenant-a", b"{}")
    assert type(grouped[1][0]) is LogRecord and grouped[1][0].key == "tenant-a"  # built without its __new__


def test_log_records_read_a_missing_key_or_value_as_empty() -> None:
    (record,) = log_records([[Fetched("usage", 0, 4, key=None, value=None)]])[0]
    assert (record.key, record.value) == ("", b"")


def test_log_records_keep_each_records_headers() -> None:
    headers = [("content-type", b"application/cloudevents+json"), ("traceparent", b"00-ab-cd-01")]
    (record,) = log_records([[Fetched("usage", 0, 4, headers=headers)]])[0]  # type: ignore[arg-type]  # aiokafka gives a list
    assert record.headers == tuple(headers)


async def test_take_gathers_buffered_runs_up_to_a_batch_and_leaves_the_rest() -> None:
    buffer = RunBuffer(max_records=100)
    for first in (0, 4, 8):
        await buffer.put(run(0, first, 4))
    taken = await buffer.take(batch=9)
    assert [len(r) for r in taken] == [4, 4]  # a third run would pass 9 records
    assert len(buffer) == 4
    assert [r[0].offset for r in await buffer.take(batch=9)] == [8]


async def test_take_returns_a_run_longer_than_the_batch_whole() -> None:
    buffer = RunBuffer(max_records=100)
    await buffer.put(run(0, 0, 50))
    (taken,) = await buffer.take(batch=10)
    assert len(taken) == 50 and len(buffer) == 0


async def test_put_waits_while_the_buffer_is_at_its_bound() -> None:
    buffer = RunBuffer(max_records=8)
    await buffer.put(run(0, 0, 8))
    blocked = asyncio.create_task(buffer.put(run(0, 8, 1)))
    await asyncio.sleep(0.02)
    assert not blocked.done()
    await buffer.take(batch=100)
    await asyncio.wait_for(blocked, 1)
    assert len(buffer) == 1


async def test_take_waits_for_a_first_run() -> None:
    buffer = RunBuffer(max_records=10)
    waiting = asyncio.create_task(buffer.take(batch=10))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    await buffer.put(run(2, 0, 1))
    assert [len(r) for r in await asyncio.wait_for(waiting, 1)] == [1]


async def test_a_partial_batch_lingers_for_more_records() -> None:
    buffer = RunBuffer(max_records=100, linger=0.2)
    await buffer.put(run(0, 0, 2))
    taking = asyncio.create_task(buffer.take(batch=5))
    await asyncio.sleep(0.05)
    assert not taking.done()  # still lingering for a fuller batch
    await buffer.put(run(0, 2, 3))  # the batch is full: no need to linger longer
    taken = await asyncio.wait_for(taking, 0.1)
    assert sum(len(r) for r in taken) == 5


async def test_lingering_ends_when_the_oldest_run_has_waited_long_enough() -> None:
    buffer = RunBuffer(max_records=100, linger=0.1)
    await buffer.put(run(0, 0, 2))
    started = time.monotonic()
    taken = await buffer.take(batch=50)
    assert 0.08 <= time.monotonic() - started < 1.0
    assert sum(len(r) for r in taken) == 2


async def test_a_run_that_waited_out_its_linger_meanwhile_is_taken_at_once() -> None:
    now = [100.0]
    buffer = RunBuffer(max_records=100, linger=5.0, clock=lambda: now[0])
    await buffer.put(run(0, 0, 2))
    now[0] += 6.0  # e.g. while the previous batch was folding
    taken = await asyncio.wait_for(buffer.take(batch=50), 0.5)
    assert sum(len(r) for r in taken) == 2


@pytest.mark.parametrize("batch", [1, 3])
async def test_runs_come_out_in_the_order_they_went_in(batch: int) -> None:
    buffer = RunBuffer(max_records=100)
    for first in range(0, 6):
        await buffer.put(run(first % 2, first, 1))
    out: list[int] = []
    while len(buffer):
        out += [r[0].offset for r in await buffer.take(batch)]
    assert out == list(range(6))
