"""Each tenant's share of the meter views' reads in one API process (OMNI_MAX_QUERIES_PER_TENANT).

A meter query over tens of thousands of buckets holds a database connection and a thread for
seconds. In Kafka mode the API's views pool holds 8 connections: a walkthrough's tenant keeping 16
heavy queries open at once took all of them, and every other tenant's reads and commands waited
past OMNI_DATABASE_WAIT_SECONDS and were answered 503 "database unreachable" (consumes and ingest
took 3 to 6 s). So:

- a tenant runs at most `per_tenant` meter queries at once in one API process; the rest wait
  their turn on the event loop, holding no thread and no connection, at most `waiting` of them,
  each for at most `wait_seconds`; past either, 429 `too-many-queries` with `Retry-After`, to that
  tenant alone;
- the process runs at most `most` heavy reads at once, every tenant's queries and watches'
  answers together (`HeavyReads`), fewer than the pool's connections, so commands, consume and the
  other reads always find one. A read waits for one of those in arrival order (asyncio's semaphore
  wakes its waiters first in, first out) within the same bound.

The reads `as_of` an instant (meter queries, quotas, invoices) take a query's turn too: each folds
the log into a store of its own, and 45 of them at once held every thread and database connection
(`/readyz` failed, other tenants waited 30 s).

A tenant's watches take turns of their own (one at a time), apart from its queries: watches woken
together, waiting for the watch threads behind other tenants' answers, held the tenant's query
turns, and its own queries were refused for other tenants' load.

Not shared between processes: N API processes let a tenant run N times as many.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from anyio import to_thread
from fastapi import Request

from api.problems import Problem
from commands.control_plane import PLATFORM, Principal
from omni import metrics

T = TypeVar("T")

RETRY_AFTER_SECONDS = 1
# Connections of the views pool (8 in Kafka mode) left for every request other than heavy reads.
KEPT_FOR_THE_REST = 3


class HeavyReads:
    """The process's heavy reads at once: every tenant's meter queries and watches' answers."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.slots = asyncio.Semaphore(most)

    @classmethod
    def beside_a_pool(cls, connections: int) -> HeavyReads:
        return cls(max(1, connections - KEPT_FOR_THE_REST))


@dataclass(slots=True)
class _Turns:
    running: asyncio.Semaphore
    holders: int = field(default=0)  # running or waiting


class TenantReads:
    def __init__(self, per_tenant: int, *, waiting: int, wait_seconds: float, heavy: HeavyReads) -> None:
        self.per_tenant = per_tenant
        self.waiting = waiting
        self.wait_seconds = wait_seconds
        self.heavy = heavy
        self._turns: dict[str, _Turns] = {}

    def running(self, tenant_id: str) -> int:
        """How many of the tenant's reads hold a turn now (for the tests)."""
        turns = self._turns.get(tenant_id)
        return 0 if turns is None else self.per_tenant - turns.running._value

    @asynccontextmanager
    async def turn(self, tenant_id: str, *, patient: bool = False) -> AsyncIterator[None]:
        """Run the body as one of the tenant's reads and one of the process's heavy reads: at once
        if both are free, else after waiting for them (`patient`: without a bound, for a watch
        already open). 429 when too many of the tenant's wait, or the wait runs past its bound."""
        turns = self._turns.get(tenant_id)
        if turns is None:
            turns = self._turns[tenant_id] = _Turns(asyncio.Semaphore(self.per_tenant))
        if not patient and turns.holders >= self.per_tenant + self.waiting:
            raise self._refused(f"{self.waiting} more already wait")
        turns.holders += 1
        try:
            try:
                async with asyncio.timeout(None if patient else self.wait_seconds):
                    await turns.running.acquire()
                    try:
                        await self.heavy.slots.acquire()
                    except BaseException:
                        turns.running.release()
                        raise
            except TimeoutError:
                raise self._refused(f"none could start within {self.wait_seconds:g}s") from None
            try:
                yield
            finally:
                self.heavy.slots.release()
                turns.running.release()
        finally:
            turns.holders -= 1
            if turns.holders == 0:
                del self._turns[tenant_id]

    def _refused(self, why: str) -> Problem:
        metrics.QUERIES_REFUSED.inc()
        return Problem(
            429,
            "Too many queries",
            f"This tenant's heavy reads (meter queries, reads as of an instant) take turns, {self.per_tenant} at "
            f"once in this API process (OMNI_MAX_QUERIES_PER_TENANT), and the process's {self.heavy.most} at once "
            f"in all; {why}. Retry shortly.",
            kind="too-many-queries",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


async def read_in_thread(request: Request, principal: Principal, read: Callable[[], T], *, heavy: bool) -> T:
    """`read` in a worker thread; a heavy one (a meter query, a fold of the log as of an instant)
    in one of the caller's turns (the admin's are the platform's), waited for on the loop."""
    if not heavy:
        return await to_thread.run_sync(read)
    reads: TenantReads = request.app.state.tenant_reads
    async with reads.turn(principal.tenant_id or PLATFORM):
        return await to_thread.run_sync(read)
