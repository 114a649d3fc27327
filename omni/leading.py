"""A duty one process does at a time: while it holds the leadership, a step every so often."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from stores.database import Database, StoreUnavailable
from streams.pausing import pause

log = logging.getLogger(__name__)


async def lead_every(
    db: Database, leader: str, seconds: float, stop: asyncio.Event, step: Callable[[], Awaitable[object]], what: str
) -> None:
    """Until `stop`: whenever this process holds the leadership `leader`, run `step`, then wait `seconds`.

    A store outage is waited out and any other failure logged: the next turn tries again. The
    leadership is released on the way out, for another process to take."""
    leadership = db.leadership(leader)
    try:
        while not stop.is_set():
            try:
                if await asyncio.to_thread(leadership.hold):
                    await step()
            except StoreUnavailable as outage:
                log.warning("%s waiting: %s", what, outage)
            except Exception:
                log.exception("%s failed; retrying", what)
            await pause(stop, seconds)
    finally:
        leadership.release()
