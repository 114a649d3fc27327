"""Group calls: a lone item goes at once; items arriving during a call share the next one, in order;
a failed call fails its own items only; a caller that gives up does not stop the others."""

from __future__ import annotations

import asyncio

import pytest

from streams.group_call import GroupCall


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.failing: set[int] = set()

    async def run(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await self.release.wait()
        if self.failing & set(items):
            raise ConnectionError(f"lost {items}")
        return [item * 10 for item in items]


async def test_a_lone_item_goes_at_once_and_later_ones_share_the_next_call_in_order() -> None:
    recorder = Recorder()
    call: GroupCall[int, int] = GroupCall(recorder.run)
    first = asyncio.create_task(call(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.calls == [[1]], "the first item does not wait for company"
    rest = [asyncio.create_task(call(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert recorder.calls == [[1]], "one call at a time"
    recorder.release.set()
    assert await first == 10
    assert [await task for task in rest] == [20, 30, 40]
    assert recorder.calls == [[1], [2, 3, 4]]


async def test_groups_are_bounded() -> None:
    recorder = Recorder()
    recorder.release.set()
    call: GroupCall[int, int] = GroupCall(recorder.run, most=2)
    assert await asyncio.gather(*(call(n) for n in range(5))) == [0, 10, 20, 30, 40]
    assert all(len(group) <= 2 for group in recorder.calls)
    assert [item for group in recorder.calls for item in group] == [0, 1, 2, 3, 4]


async def test_a_failed_call_fails_its_own_items_only() -> None:
    recorder = Recorder()
    recorder.failing = {1}
    call: GroupCall[int, int] = GroupCall(recorder.run)
    first = asyncio.create_task(call(1))
    await asyncio.sleep(0)
    later = asyncio.create_task(call(2))
    await asyncio.sleep(0)
    recorder.release.set()
    with pytest.raises(ConnectionError):
        await first
    assert await later == 20


async def test_a_caller_that_gives_up_leaves_the_others_answered() -> None:
    recorder = Recorder()
    call: GroupCall[int, int] = GroupCall(recorder.run)
    first = asyncio.create_task(call(1))
    await asyncio.sleep(0)
    gone, kept = asyncio.create_task(call(2)), asyncio.create_task(call(3))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.release.set()
    assert await first == 10
    assert await kept == 30
    assert recorder.calls == [[1], [2, 3]], "the item was sent anyway (it may have been already)"


async def test_closing_cancels_the_waiting_items() -> None:
    recorder = Recorder()
    call: GroupCall[int, int] = GroupCall(recorder.run)
    first = asyncio.create_task(call(1))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(call(2))
    await asyncio.sleep(0)
    call.close()
    for task in (first, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_wrong_number_of_results_fails_the_group() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    call: GroupCall[int, int] = GroupCall(short)
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        await asyncio.gather(call(1), call(2), call(3))


async def test_a_posted_item_goes_with_the_next_call_and_only_its_failure_is_told() -> None:
    recorder = Recorder()
    recorder.failing = {2}
    told: list[BaseException] = []
    call: GroupCall[int, int] = GroupCall(recorder.run)
    first = asyncio.create_task(call(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    call.post(2, on_failure=told.append)
    call.post(3, on_failure=told.append)
    later = asyncio.create_task(call(4))
    await asyncio.sleep(0)
    assert recorder.calls == [[1]], "posted items wait for the call under way, as awaited ones do"
    recorder.release.set()
    assert await first == 10
    with pytest.raises(ConnectionError):
        await later  # the call that carried 2 failed: every item of it is told
    assert recorder.calls == [[1], [2, 3, 4]]
    assert [str(failure) for failure in told] == ["lost [2, 3, 4]", "lost [2, 3, 4]"]


async def test_a_posted_item_alone_starts_a_call_and_drain_waits_for_it() -> None:
    recorder = Recorder()
    call: GroupCall[int, int] = GroupCall(recorder.run)
    call.post(7, on_failure=lambda failure: pytest.fail(f"told {failure}"))
    draining = asyncio.create_task(call.drain(timeout=5))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.calls == [[7]] and not draining.done()
    recorder.release.set()
    await draining
    await asyncio.wait_for(call.drain(timeout=5), 1)  # nothing under way: at once


async def test_drain_gives_up_after_its_timeout() -> None:
    recorder = Recorder()  # never released
    call: GroupCall[int, int] = GroupCall(recorder.run)
    call.post(1, on_failure=lambda failure: None)
    await asyncio.sleep(0)
    await asyncio.wait_for(call.drain(timeout=0.05), 1)
    assert recorder.calls == [[1]]
    call.close()


class Timed:
    """Answers at once, and notes when each call began."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[int]]] = []

    async def run(self, items: list[int]) -> list[int]:
        self.calls.append((asyncio.get_running_loop().time(), list(items)))
        return [item * 10 for item in items]


async def test_spacing_gathers_what_comes_within_it_into_the_next_call() -> None:
    """At a steady rate the round trip is short and groups would stay small: with a spacing, calls
    start at least that far apart, each carrying everything that came since the last."""
    timed, spacing = Timed(), 0.05
    call: GroupCall[int, int] = GroupCall(timed.run, spacing=spacing)
    assert await call(1) == 10
    assert len(timed.calls) == 1, "the first item of a quiet moment goes at once"
    second = asyncio.create_task(call(2))  # the last call began just now: this one waits out the rest
    await asyncio.sleep(spacing / 5)
    assert len(timed.calls) == 1
    later = [asyncio.create_task(call(n)) for n in (3, 4)]
    assert [await second, *[await task for task in later]] == [20, 30, 40]
    assert [items for _, items in timed.calls] == [[1], [2, 3, 4]]
    assert timed.calls[1][0] - timed.calls[0][0] >= spacing * 0.95  # the loop's timer may round


async def test_spacing_never_delays_a_lone_item_after_a_quiet_moment_nor_a_full_group() -> None:
    timed, spacing = Timed(), 0.05
    call: GroupCall[int, int] = GroupCall(timed.run, most=3, spacing=spacing)
    await call(1)
    await asyncio.sleep(spacing * 1.5)
    began = asyncio.get_running_loop().time()
    await call(2)
    assert timed.calls[1][0] - began < spacing / 2, "quiet for longer than the spacing: no wait"
    full = [asyncio.create_task(call(n)) for n in (3, 4, 5)]  # `most` of them: they go without waiting
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [items for _, items in timed.calls] == [[1], [2], [3, 4, 5]]
    assert [await task for task in full] == [30, 40, 50]


async def test_closing_while_spacing_cancels_the_items_waiting() -> None:
    """Closed during the wait before a call: its items are cancelled, never left hanging."""
    timed = Timed()
    call: GroupCall[int, int] = GroupCall(timed.run, spacing=10.0)
    await call(1)
    waiting = asyncio.create_task(call(2))
    await asyncio.sleep(0.01)
    call.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, timeout=1.0)
    assert [items for _, items in timed.calls] == [[1]]
