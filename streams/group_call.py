"""Group calls: concurrent requests share one round trip, the way a group commit shares one fsync.

`GroupCall(run)` is awaited once per item. The first item of a quiet moment is sent at once, alone;
items arriving while a call is under way wait for it and then go together, in arrival order, in
the next call (at most `most` of them). So a lone request pays no added latency, and under load the
number of round trips, and the per-call CPU on both ends, shrinks by the size of the groups.

`spacing` (seconds; 0, the default, for none) sets the least time from one call's start to the
next's. Without it, at a steady moderate rate the groups stay small (a round trip of a fraction of
a millisecond gathers one or two items), and every group costs its caller, and the server, the same
system calls and wake-ups. With it, an item that comes within `spacing` of the last call's start
waits out the rest of it, and the items that came meanwhile go with it: calls at most 1/`spacing`
a second, each carrying what arrived since the last. Less CPU per item, for a longer wait (README,
"Performance": consume at 2,000 a second). A lone item after a quiet moment still goes at once,
and a group of `most` goes without waiting.

`run(items)` answers one result per item, in order, or raises: then every item of that call
raises. An item whose caller was cancelled is still sent (it may have been already): its result is
dropped. An item can also be posted without waiting for it (`post`): it goes with the next call,
and only a failure is told, to the callback given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCall(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], *, most: int = 256, spacing: float = 0.0) -> None:
        self._run = run
        self._most = most
        self._spacing = spacing
        self._last_start = float("-inf")  # the loop's clock when the last call began
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._caller: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._enqueue(item, future)
        return await future

    def _enqueue(self, item: T, future: asyncio.Future[R]) -> None:
        self._waiting.append((item, future))
        if self._caller is None or self._caller.done():
            self._caller = asyncio.create_task(self._call_waiting(), name="group-call")

    def post(self, item: T, on_failure: Callable[[BaseException], None]) -> None:
        """Send `item` with the next call without waiting for its result; a failure of that call is
        passed to `on_failure` (a cancellation is not)."""

        def told(future: asyncio.Future[R]) -> None:
            if not future.cancelled() and (failure := future.exception()) is not None:
                on_failure(failure)

        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        future.add_done_callback(told)
        self._enqueue(item, future)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) until every item waiting or under way has been sent."""
        if self._caller is not None and not self._caller.done():
            await asyncio.wait({self._caller}, timeout=timeout)

    def close(self) -> None:
        if self._caller is not None:
            self._caller.cancel()

    async def _call_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            if self._spacing and len(self._waiting) < self._most:
                wait = self._last_start + self._spacing - loop.time()
                if wait > 0:
                    try:
                        await asyncio.sleep(wait)  # the items coming meanwhile join this call
                    except asyncio.CancelledError:  # closed while waiting: nothing of this call was sent
                        for _, future in self._waiting:
                            future.cancel()
                        self._waiting = []
                        raise
            self._last_start = loop.time()
            group, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
            try:
                results = await self._run([item for item, _ in group])
                if len(results) != len(group):
                    raise RuntimeError(f"a group call answered {len(results)} results for {len(group)} items")
            except asyncio.CancelledError:
                for _, future in group + self._waiting:
                    future.cancel()
                self._waiting = []
                raise
            except Exception as failure:  # noqa: BLE001 - every item of the call gets it
                for _, future in group:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():  # its caller is gone
                    future.set_result(result)
