"""Hand each fetched record to Faust's agents without a handful of tasks per record.

Faust's fetch loop delivers every record with

    await consumer.wait_first(callback(message), consumer.suspend_flow.wait())

so that a delivery stuck on a full agent queue (or on paused flow) is abandoned
when a rebalance suspends the flow. mode's `wait_first` wraps each of those, and
the consumer's stopped and crashed events, in a task of its own, then cancels the
losers: about 20 µs per record, the largest single cost of Faust's delivery.

Almost every delivery finishes without waiting for anything: the agent's queue has
room and the flow runs. `deliver_first` therefore runs the delivery's first step
inline. If that finishes it, there was nothing to race. If the delivery has to
wait, it is resumed under Faust's own `wait_first`, with the semantics above.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mode.services import WaitResults

WaitFirst = Callable[..., Awaitable[WaitResults]]


def is_delivery(coros: tuple[Any, ...], timeout: object) -> bool:
    """The shape of the fetch loop's call: (the delivery coroutine, the suspend_flow wait), no timeout."""
    return timeout is None and len(coros) == 2 and all(asyncio.iscoroutine(c) for c in coros)


async def deliver_first(wait_first: WaitFirst, coros: tuple[Any, ...], timeout: object = None) -> WaitResults:
    """`wait_first(*coros)`, with the delivery's first step run inline when `coros` is the fetch loop's call."""
    if not is_delivery(coros, timeout):
        return await wait_first(*coros, timeout=timeout)
    delivery, suspended = coros
    try:
        waiting_on = delivery.send(None)
    except StopIteration as done:
        suspended.close()  # never started: nothing to cancel
        return WaitResults([delivery], [done.value], False)
    except BaseException:
        suspended.close()
        raise
    return await wait_first(resumed(delivery, waiting_on), suspended)


async def resumed(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    """Finish `coro`, which has been stepped by hand and yielded `waiting_on`, as a task would.

    A task sends None into a coroutine once the future it yielded is done (a bare
    yield, from `asyncio.sleep(0)`, just gives the loop a turn), and throws
    cancellation into it. Here: await the same future, then send None into the
    coroutine; an exception raised at our await (our cancellation, or the future's
    failure) is thrown into the coroutine at the point where it waits.
    """
    while True:
        thrown: BaseException | None = None
        try:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                # What a task does with a yielded future before it waits on it; a future
                # still marked "blocking" refuses to be awaited again.
                waiting_on._asyncio_future_blocking = False
                await waiting_on
        except BaseException as error:  # handed to the coroutine, which decides
            thrown = error
        try:
            waiting_on = coro.send(None) if thrown is None else coro.throw(thrown)
        except StopIteration as done:
            return done.value
