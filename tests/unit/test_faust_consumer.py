"""BatchConsumer: full agent queues hold the next delivery until they drain, once, not per delivery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from streams import faust_consumer
from streams.faust_consumer import BatchConsumer, transport_with

TOPIC_PARTITION = TP("usage", 0)


@pytest.fixture
async def consumer(tmp_path: Path) -> AsyncIterator[BatchConsumer]:
    app = faust.App(
        "unit-batch-consumer",
        broker="kafka://127.0.0.1:1",
        datadir=str(tmp_path),
        web_enabled=False,
        loop=asyncio.get_running_loop(),  # the consumer's waits run on the test's loop
    )
    app.transport = transport_with(BatchConsumer)(app.conf.broker_consumer, app)
    consumer = app.consumer  # built, never started: no broker is contacted
    assert isinstance(consumer, BatchConsumer)
    yield consumer


def recording(delivered: list[int], item: int) -> Coroutine[Any, Any, None]:
    async def deliver() -> None:
        delivered.append(item)

    return deliver()


async def test_deliveries_go_straight_through_while_the_queues_have_room(consumer: BatchConsumer) -> None:
    delivered: list[int] = []
    for item in range(3):
        await consumer.wait_first(recording(delivered, item), consumer.suspend_flow.wait())
    assert delivered == [0, 1, 2]


async def test_a_full_queue_holds_the_next_delivery_until_it_drains(consumer: BatchConsumer) -> None:
    delivered: list[int] = []
    consumer.on_buffer_full(TOPIC_PARTITION)

    held = asyncio.create_task(consumer.wait_first(recording(delivered, 1), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.05)
    assert not held.done() and delivered == []

    consumer.on_buffer_drop(TOPIC_PARTITION)  # back under the low-water mark
    await asyncio.wait_for(held, 1)
    assert delivered == [1]
    await consumer.wait_first(recording(delivered, 2), consumer.suspend_flow.wait())  # no wait now
    assert delivered == [1, 2]


async def test_every_full_partition_must_drain_before_deliveries_go_on(consumer: BatchConsumer) -> None:
    delivered: list[int] = []
    other = TP("usage", 1)
    consumer.on_buffer_full(TOPIC_PARTITION)
    consumer.on_buffer_full(other)
    held = asyncio.create_task(consumer.wait_first(recording(delivered, 1), consumer.suspend_flow.wait()))

    consumer.on_buffer_drop(TOPIC_PARTITION)
    await asyncio.sleep(0.05)
    assert not held.done()
    consumer.on_buffer_drop(other)
    await asyncio.wait_for(held, 1)
    assert delivered == [1]


async def test_a_rebalance_abandons_a_held_delivery(consumer: BatchConsumer) -> None:
    delivered: list[int] = []
    consumer.on_buffer_full(TOPIC_PARTITION)
    held = asyncio.create_task(consumer.wait_first(recording(delivered, 1), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.02)

    consumer.stop_flow()  # what Faust does when partitions are revoked
    await asyncio.wait_for(held, 1)

    assert delivered == []


async def test_after_a_rebalance_deliveries_are_not_held_for_the_cleared_queues(consumer: BatchConsumer) -> None:
    delivered: list[int] = []
    consumer.on_buffer_full(TOPIC_PARTITION)
    consumer.stop_flow()  # Faust clears the agents' queues next; a cleared queue reports no drop
    consumer.resume_flow()

    await asyncio.wait_for(consumer.wait_first(recording(delivered, 1), consumer.suspend_flow.wait()), 0.1)

    assert delivered == [1]


async def test_a_drop_that_never_comes_holds_deliveries_only_briefly(
    consumer: BatchConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faust_consumer, "RELIEF_WAIT", 0.05)
    delivered: list[int] = []
    consumer.on_buffer_full(TOPIC_PARTITION)

    await asyncio.wait_for(consumer.wait_first(recording(delivered, 1), consumer.suspend_flow.wait()), 1)
    await asyncio.wait_for(consumer.wait_first(recording(delivered, 2), consumer.suspend_flow.wait()), 0.04)

    assert delivered == [1, 2]


async def test_committing_runs_reaches_their_last_offset_and_keeps_nothing(consumer: BatchConsumer) -> None:
    """As Faust's fetch loop does: a gap up to each run's message, then its ack; commits now
    and then. Each commit must reach the last acked run, and leave no offsets behind."""
    tp = TP("usage", 7)
    consumer._committed_offset[tp] = None
    read: int | None = None
    last = -1
    for run, size in enumerate([100, 150, 1, 150, 100] * 40):
        last += size
        if read is not None and last - read > 1:
            await consumer._add_gap(tp, read + 1, last)
        consumer._acked[tp].append(last)
        consumer._acked_index[tp].add(last)
        read = last
        if run % 7 == 6:
            committed = consumer._new_offset(tp)
            assert committed == last + 1
            consumer._committed_offset[tp] = committed - 1
            assert consumer._acked[tp] == [] and not consumer._gap[tp], "nothing held after a commit"


async def test_an_overlapping_gap_still_commits_to_the_end(consumer: BatchConsumer) -> None:
    tp = TP("usage", 8)
    consumer._committed_offset[tp] = None
    for first, last in [(0, 99), (100, 249)]:
        await consumer._add_gap(tp, first, last)
        consumer._acked[tp].append(last)
        consumer._acked_index[tp].add(last)
    await consumer._add_gap(tp, 50, 120)  # overlaps both and covers an acked offset, as after a seek back
    assert consumer._new_offset(tp) == 250
    assert consumer._acked[tp] == []


async def test_a_second_seek_to_zero_behind_an_acked_run_still_commits_to_the_end(consumer: BatchConsumer) -> None:
    """A worker's start seeks twice (the assignment, then Faust): a run fetched between them
    is acked after the second seek to 0 has re-delivered its offsets in a longer run.

    Faust's fetch loop adds no gap while its read offset is 0, so only the consumer's own gap
    within the run lets the commit pass the early ack; without it the commit stopped there
    for good."""
    tp = TP("usage", 9)

    async def deliver(first: int, last: int) -> None:
        """What getmany and Faust's fetch loop do for one run, then the run's ack."""
        await consumer._gap_within_run(tp, first, last)
        read = consumer._read_offset.get(tp)
        if read and last - read > 1:
            await consumer._add_gap(tp, read + 1, last)
        consumer._read_offset[tp] = last
        if last not in consumer._acked_index[tp]:
            consumer._acked[tp].append(last)
            consumer._acked_index[tp].add(last)

    def seek_to_zero() -> None:
        consumer._read_offset[tp] = 0
        consumer._committed_offset[tp] = None

    seek_to_zero()
    await deliver(0, 9)  # fetched before the second seek, acked after it
    seek_to_zero()
    await deliver(0, 29)
    committed = consumer._new_offset(tp)
    assert committed == 30
    consumer._committed_offset[tp] = committed
    await deliver(30, 49)
    assert consumer._new_offset(tp) == 50
    assert consumer._acked[tp] == [] and not consumer._gap[tp], "nothing held after a commit"
