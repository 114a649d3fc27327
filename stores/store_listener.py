"""LISTEN to the event store's PostgreSQL channel: every process hears every command's commit.

The eventsourcing recorder sends NOTIFY on its channel in each transaction
that stores events, so the notice arrives when the events are committed, from
whichever process stored them. A notice carries nothing; the listener only
says "the store changed" and the reader looks at what changed.

Whether notices can be trusted matters as much as the notices: `listening`
runs once LISTEN is in place (nothing committed after it can go unheard), and
`lost` runs when the connection fails or stops answering a probe, before any
retry. Between the two, changes may go unheard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

APPLICATION_NAME = "omni-store-listener"


def application_name(channel: str) -> str:
    """How a listener's connection shows in pg_stat_activity: with the channel it listens on (its
    event store), so one deployment's listeners can be told from another's on a shared server.
    PostgreSQL keeps 63 bytes of it."""
    return f"{APPLICATION_NAME} {channel}"[:63]


@dataclass
class StoreListener:
    url: str
    channel: str
    listening: Callable[[], Awaitable[None]]
    changed: Callable[[], Awaitable[None]]
    lost: Callable[[], Awaitable[None]]
    probe_every: float = 5.0
    probe_timeout: float = 2.0
    retry_max: float = 5.0

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        try:
            while not stop.is_set():
                try:
                    await self._listen(stop)
                    backoff = 0.2
                except Exception as failure:
                    log.warning("event store notifications lost (%s); retrying in %.1fs", failure, backoff)
                    await self.lost()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=backoff)
                    backoff = min(backoff * 2, self.retry_max)
        finally:
            await self.lost()  # stopped or cancelled: nobody hears the store any more

    async def _listen(self, stop: asyncio.Event) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=5, application_name=application_name(self.channel)
        )
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            await self.listening()
            quiet = 0.0
            while not stop.is_set():
                heard = await _first_notice(conn, stop)
                if heard is None:
                    return  # stopped while waiting: the process shuts down at once, not after the second
                if heard:
                    quiet = 0.0
                    await self.changed()
                    continue
                quiet += 1.0
                if quiet >= self.probe_every:
                    # A connection that died without a word delivers no notices and raises nothing:
                    # only asking proves it is alive.
                    await self._probe(conn)
                    quiet = 0.0

    async def _probe(self, conn: psycopg.AsyncConnection) -> None:
        """SELECT 1 within probe_timeout, or the notices are lost from that moment on.

        Not asyncio.wait_for: psycopg meets the cancellation by cancelling the query on the server
        and waiting for it to end, up to ten seconds more on a connection that does not answer,
        all before the timeout would reach us. Here `lost` runs at the timeout; the unanswered
        query is cancelled behind it, and the connection closed as we leave."""
        probe = asyncio.ensure_future(conn.execute("SELECT 1"))
        done, _ = await asyncio.wait({probe}, timeout=self.probe_timeout)
        if done:
            probe.result()  # raises if the probe failed
            return
        await self.lost()
        probe.add_done_callback(lambda task: task.cancelled() or task.exception())  # nobody awaits it
        probe.cancel()
        raise ProbeUnanswered(f"the event store did not answer a probe within {self.probe_timeout}s")


async def _first_notice(conn: psycopg.AsyncConnection, stop: asyncio.Event) -> bool | None:
    """Whether a notice came within a second of silence; None once `stop` is set meanwhile."""

    async def heard() -> bool:
        async for _ in conn.notifies(timeout=1.0, stop_after=1):
            return True
        return False

    listening = asyncio.ensure_future(heard())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({listening, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if listening.done():
        return listening.result()
    listening.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listening
    return None


class ProbeUnanswered(Exception):
    """The listening connection did not answer a probe in time: notices may be going unheard."""
