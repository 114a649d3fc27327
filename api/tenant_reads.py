"""Each tenant's share of the meter views' reads in one API process (OMNI_MAX_QUERIES_PER_TENANT).

A meter query over tens of thousands of buckets holds a database connection and a thread for
seconds. In Kafka mode the API's views pool holds 8 connections: a walkthrough's tenant keeping 16
heavy queries open at once took all of them, and every other tenant's reads and commands waited
past OMNI_DATABASE_WAIT_SECONDS and were answered 503 "database unreachable" (consumes and ingest
took 3 to 6 s). So a tenant runs at most `per_tenant` meter queries at once in one API process, its
watches' answers among them. Its other queries wait their turn on the event loop, holding no
thread and no connection: at most `waiting` of them, each for at most `wait_seconds` (a watch waits
as long as it takes); past either the answer is 429 `too-many-queries` with `Retry-After`, and the
tenant alone sees it.

Not shared between processes: N API processes let a tenant run N times as many.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from api.problems import Problem
from omni import metrics

RETRY_AFTER_SECONDS = 1


@dataclass(slots=True)
class _Turns:
    running: asyncio.Semaphore
    holders: int = field(default=0)  # running or waiting


class TenantReads:
    def __init__(self, per_tenant: int, *, waiting: int, wait_seconds: float) -> None:
        self.per_tenant = per_tenant
        self.waiting = waiting
        self.wait_seconds = wait_seconds
        self._turns: dict[str, _Turns] = {}

    def running(self, tenant_id: str) -> int:
        """How many of the tenant's reads run now (for the tests and the metrics)."""
        turns = self._turns.get(tenant_id)
        return 0 if turns is None else self.per_tenant - turns.running._value

    @asynccontextmanager
    async def turn(self, tenant_id: str, *, patient: bool = False) -> AsyncIterator[None]:
        """Run the body as one of the tenant's reads: at once if it has a turn free, else after
        waiting for one (`patient`: without a bound, for a watch). 429 when too many wait."""
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
            except TimeoutError:
                raise self._refused(f"none ended within {self.wait_seconds:g}s") from None
            try:
                yield
            finally:
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
            f"This tenant already runs {self.per_tenant} meter queries at once in this API process "
            f"(OMNI_MAX_QUERIES_PER_TENANT), and {why}; retry shortly.",
            kind="too-many-queries",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
