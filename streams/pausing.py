"""The idle wait of the background loops (the runner, the outbox relay)."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Pause(Protocol):
    """`pause`'s signature: the loops take one, so that a test can pass a pause of its own."""

    async def __call__(self, stop: asyncio.Event, seconds: float, woken: asyncio.Event | None = None) -> bool: ...


async def pause(stop: asyncio.Event, seconds: float, woken: asyncio.Event | None = None) -> bool:
    """Wait `seconds`, or until `stop` or `woken` is set; True if woken."""
    waits = [asyncio.ensure_future(stop.wait())]
    if woken is not None:
        waits.append(asyncio.ensure_future(woken.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    return woken is not None and woken.is_set()
