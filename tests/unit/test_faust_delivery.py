"""deliver_first: Faust's per-record `wait_first(delivery, suspend_flow.wait())`, without tasks when
the delivery does not wait, and with mode's own semantics when it does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from mode import Service
from mode.services import WaitResults
from mode.utils.locks import Event

from streams.faust_delivery import deliver_first


class Fetcher(Service):
    """A service with mode's real wait_first; counts the calls that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_calls = 0

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        return await deliver_first(self._mode_wait_first, coros, timeout)

    async def _mode_wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        self.slow_calls += 1
        return await Service.wait_first(self, *coros, timeout=timeout)


def full_queue() -> asyncio.Queue[int]:
    """A queue with no room: a delivery into it has to wait for the agent."""
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)
    return queue


async def put(queue: asyncio.Queue[int], item: int) -> str:
    await queue.put(item)
    return f"delivered {item}"


async def test_a_delivery_that_need_not_wait_finishes_inline() -> None:
    fetcher, suspend = Fetcher(), Event()
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

    result = await fetcher.wait_first(put(queue, 1), suspend.wait())

    assert result.done and result.results == ["delivered 1"] and not result.stopped
    assert queue.get_nowait() == 1
    assert fetcher.slow_calls == 0


async def test_a_delivery_that_waits_for_room_finishes_under_modes_wait_first() -> None:
    fetcher, suspend, queue = Fetcher(), Event(), full_queue()
    asyncio.get_running_loop().call_later(0.02, queue.get_nowait)

    result = await fetcher.wait_first(put(queue, 1), suspend.wait())

    assert result.results == ["delivered 1"] and not result.stopped
    assert queue.get_nowait() == 1
    assert fetcher.slow_calls == 1


async def test_a_suspended_flow_abandons_a_waiting_delivery() -> None:
    fetcher, suspend, queue = Fetcher(), Event(), full_queue()
    abandoned = asyncio.Event()

    async def deliver() -> None:
        try:
            await queue.put(1)
        finally:
            abandoned.set()

    asyncio.get_running_loop().call_later(0.02, suspend.set)  # a rebalance starts
    result = await fetcher.wait_first(deliver(), suspend.wait())

    await asyncio.wait_for(abandoned.wait(), 1)
    assert result.results == [True]  # the suspend_flow wait won
    assert queue.qsize() == 1 and queue.get_nowait() == 0  # the record was not put


async def test_a_stopped_fetch_loop_cancels_a_waiting_delivery() -> None:
    fetcher, suspend, queue = Fetcher(), Event(), full_queue()
    cancelled = asyncio.Event()

    async def deliver() -> None:
        try:
            await queue.put(1)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = asyncio.create_task(fetcher.wait_first(deliver(), suspend.wait()))
    await asyncio.sleep(0.02)
    loop.cancel()

    with pytest.raises(asyncio.CancelledError):
        await loop
    await asyncio.wait_for(cancelled.wait(), 1)


@pytest.mark.parametrize("waits_first", [False, True])
async def test_a_failing_delivery_raises_to_the_fetch_loop(waits_first: bool) -> None:
    fetcher, suspend = Fetcher(), Event()

    async def deliver() -> None:
        if waits_first:
            await asyncio.sleep(0.01)
        raise ValueError("undecodable")

    with pytest.raises(ValueError, match="undecodable"):
        await fetcher.wait_first(deliver(), suspend.wait())


async def test_a_failure_of_the_awaited_future_is_raised_where_the_delivery_waits() -> None:
    fetcher, suspend = Fetcher(), Event()
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, future.set_exception, KeyError("gone"))

    async def deliver() -> str:
        try:
            await future
        except KeyError:
            return "handled where it waited"
        return "not reached"

    result = await fetcher.wait_first(deliver(), suspend.wait())

    assert result.results == ["handled where it waited"]


async def test_a_delivery_that_only_yields_the_loop_finishes() -> None:
    fetcher, suspend = Fetcher(), Event()

    async def deliver() -> int:
        for _ in range(3):
            await asyncio.sleep(0)  # a bare yield, not a future
        return 3

    assert (await fetcher.wait_first(deliver(), suspend.wait())).results == [3]


async def test_other_calls_reach_modes_wait_first_unchanged() -> None:
    fetcher, first, second = Fetcher(), Event(), Event()
    second.set()
    waits: list[Awaitable[Any]] = [first.wait(), second.wait()]

    result = await fetcher.wait_first(*waits, timeout=1.0)  # a timeout: not the fetch loop's call

    assert result.results == [True]
    assert fetcher.slow_calls == 1
