"""Group calls: concurrent requests share one round trip, the way a group commit shares one fsync.

`GroupCall(run)` is awaited once per item. The first item of a quiet moment is sent at once, alone;
items arriving while a call is under way wait for it and then go together, in arrival order, in
the next call (at most `most` of them). So a lone request pays no added latency, and under load the
number of round trips, and the per-call CPU on both ends, shrinks by the size of the groups.

`run(items)` answers one result per item, in order, or raises: then every item of that call
raises. An item whose caller was cancelled is still sent (it may have been already): its result is
dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCall(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], *, most: int = 256) -> None:
        self._run = run
        self._most = most
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._caller: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._caller is None or self._caller.done():
            self._caller = asyncio.create_task(self._call_waiting(), name="group-call")
        return await future

    def close(self) -> None:
        if self._caller is not None:
            self._caller.cancel()

    async def _call_waiting(self) -> None:
        while self._waiting:
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
