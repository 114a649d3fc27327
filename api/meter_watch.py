"""Live meter watches: `GET /v1/meters/{slug}/watch` as Server-Sent Events (README, "Watching a meter").

A watch answers the meter query again each time the views may have changed it, and sends the answer
when it differs from the last one sent. What wakes it is one read per API process of the meter views'
positions (`stores.views.meter_positions`: per partition, where the folds stand) every
`OMNI_WATCH_POLL_MS`, made only while someone watches; a watch wakes when its tenant's partition moved,
so a change shows within about that interval of the views committing it. Each tenant's usage lives
in one partition of the usage topics (schemas.topics.partition_for), so other partitions' traffic
wakes no one, and another tenant's traffic on the same partition costs a query whose answer is
not sent (unchanged).

What one watch may cost is bounded: a tenant holds at most `OMNI_MAX_WATCHES_PER_TENANT` of them in
one API process, and the process `OMNI_MAX_WATCHES` in all (429 past either); their queries run on
threads of their own (at most WATCH_THREADS at once), so watches never take the threads that other
requests' reads run on; and a watch ends after `OMNI_WATCH_SECONDS` (the client reconnects, as
EventSource does by itself, sending `Last-Event-ID`: an answer it already holds is not sent again).
While nothing changes a comment line goes out every HEARTBEAT_SECONDS, and the caller's key is
checked again: revoked, the watch ends with a `problem` event (401). So does a query the views can no
longer answer (the meter grown past `OMNI_MAX_QUERY_BUCKETS`: 422; the views unreachable: 503).
Shutting the API down ends every watch at once, so none holds the server's graceful shutdown open.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from anyio import to_thread

from api.problems import EVENT_STORE_AWAY, Problem, exact_json, problem_body, store_unavailable
from api.tenant_reads import HeavyReads, TenantReads
from commands.errors import NotFound
from omni import metrics
from omni.bootstrap import Platform
from omni.key_lookups import LookupsBusy
from schemas.topics import partition_for
from stores import views
from stores.database import PostgresDatabase, StoreUnavailable

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
HEARTBEAT_SECONDS = 15.0
WATCH_THREADS = 4  # watches' queries at once, on threads apart from other requests'
# Embedded mode's meter reads each take a read-only SQLite connection of their own: bounded as a pool of 8.
VIEWS_READERS = 8
RECONNECT_MS = 2000  # what EventSource waits before it reconnects (the stream's `retry:` field)


def sse(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """One Server-Sent Event. `data` is one line (compact JSON has no line breaks)."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id else "")
    return head.encode() + b"data: " + data + b"\n\n"


def answer_id(body: bytes) -> str:
    """A `usage` event's id: a digest of the answer, so a reconnecting client's `Last-Event-ID` says what it holds."""
    return hashlib.sha256(body).hexdigest()[:32]


class WatchFull(Exception):
    """No watch may open now: the tenant's or the process's most are open."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ViewsPulse:
    """The meter views' positions, read every `every` seconds while at least one watch is open,
    and a wake-up for the watches of each partition that moved."""

    def __init__(self, read: Callable[[], dict[int, int]], every: float, limiter: anyio.CapacityLimiter) -> None:
        self._read = read
        self._every = every
        self._limiter = limiter
        self._positions: dict[int, int] = {}
        self._moved: dict[int, asyncio.Event] = {}
        self._users = 0
        self._task: asyncio.Task[None] | None = None

    def position(self, partition: int) -> int:
        return self._positions.get(partition, -1)

    def attach(self) -> None:
        self._users += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="meter-watch-pulse")

    def detach(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    async def moved(self, partition: int, since: int, timeout: float) -> bool:
        """True once `partition`'s position is no longer `since`; False after `timeout` seconds."""
        if self.position(partition) != since:
            return True
        event = self._moved.setdefault(partition, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def _poll(self) -> None:
        while True:
            try:
                positions = await to_thread.run_sync(self._read, limiter=self._limiter)
            except (StoreUnavailable, *EVENT_STORE_AWAY) as away:  # the views away: the watches wait on
                log.warning("live meter watches: the views' positions are unreadable (%s); trying again", away)
            except Exception:  # anything else must not leave every watch asleep for good
                log.exception("live meter watches: reading the views' positions failed; trying again")
            else:
                for partition in positions.keys() | self._positions.keys():
                    position = positions.get(partition, 0)  # none left: every meter it had was deleted
                    if self._positions.get(partition) != position:
                        self._positions[partition] = position
                        woken = self._moved.pop(partition, None)
                        if woken is not None:
                            woken.set()
            await asyncio.sleep(self._every)


class MeterWatches:
    """Every open watch of one API process, their bounds, and what wakes them."""

    def __init__(self, platform: Platform) -> None:
        settings = platform.settings
        self.platform = platform
        self.per_tenant = settings.max_watches_per_tenant
        self.most = settings.max_watches
        self.seconds = settings.watch_seconds
        self.partitions = settings.usage_partitions
        self.limiter = anyio.CapacityLimiter(WATCH_THREADS)
        # Heavy reads at once (api/tenant_reads.py): the process's, below its views pool's size; each
        # tenant's meter queries; each tenant's watches' answers, one at a time, apart from its queries.
        pool = platform.db.pool.max_size if isinstance(platform.db, PostgresDatabase) else VIEWS_READERS
        self.heavy = HeavyReads.beside_a_pool(pool)
        self.reads = TenantReads(
            settings.max_queries_per_tenant,
            waiting=settings.max_queries_waiting_per_tenant,
            wait_seconds=settings.query_wait_seconds,
            heavy=self.heavy,
        )
        self.answers = TenantReads(
            1, waiting=settings.max_watches_per_tenant, wait_seconds=settings.query_wait_seconds, heavy=self.heavy
        )
        self.pulse = ViewsPulse(self._positions, settings.watch_poll_ms / 1000, self.limiter)
        self.open_by_tenant: Counter[str] = Counter()
        self.closing = asyncio.Event()

    def _positions(self) -> dict[int, int]:
        with self.platform.db.reading() as tx:
            return views.meter_positions(tx)

    @property
    def count(self) -> int:
        return sum(self.open_by_tenant.values())

    def open(self, tenant_id: str, authorization: str, instance: str) -> Watch:
        if self.closing.is_set():
            raise WatchFull("The API is shutting down; reconnect to another process.", retry_after=1)
        if self.open_by_tenant[tenant_id] >= self.per_tenant:
            raise WatchFull(
                f"This tenant already holds {self.per_tenant} watches in this API process "
                "(OMNI_MAX_WATCHES_PER_TENANT): close one first.",
                retry_after=int(HEARTBEAT_SECONDS),
            )
        if self.count >= self.most:
            raise WatchFull(
                f"This API process already holds {self.most} watches (OMNI_MAX_WATCHES); retry shortly.",
                retry_after=int(HEARTBEAT_SECONDS),
            )
        self.open_by_tenant[tenant_id] += 1
        metrics.METER_WATCHES.inc()
        self.pulse.attach()
        return Watch(self, tenant_id, authorization, instance)

    def _closed(self, tenant_id: str) -> None:
        self.open_by_tenant[tenant_id] -= 1
        if self.open_by_tenant[tenant_id] <= 0:
            del self.open_by_tenant[tenant_id]
        metrics.METER_WATCHES.dec()
        self.pulse.detach()

    def close(self) -> None:
        """End every watch (the API is stopping) and refuse new ones."""
        self.closing.set()


class Watch:
    """One open watch: its tenant's partition, the position its last answer was read at, its key."""

    def __init__(self, watches: MeterWatches, tenant_id: str, authorization: str, instance: str) -> None:
        self.watches = watches
        self.tenant_id = tenant_id
        self.authorization = authorization
        self.instance = instance
        self.partition = partition_for(tenant_id, watches.partitions)
        self.since = watches.pulse.position(self.partition)
        self.took = 0.0  # how long the last answer took to read and write
        self.answered = 0.0  # when it was done (time.monotonic())
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            self.watches._closed(self.tenant_id)

    async def answer(self, ask: Callable[[], dict[str, Any]], *, first: bool = False) -> bytes:
        """The query's answer now, read at or after the position noted first (so no change is missed),
        in its turn among the tenant's watches and the process's heavy reads: the first within a
        query's bound (429 past it, before the stream starts), the next ones as long as it takes."""
        async with self.watches.answers.turn(self.tenant_id, patient=not first):
            self.since = self.watches.pulse.position(self.partition)
            started = time.monotonic()
            # Written in the thread too: a 6 MB answer's JSON held the event loop 0.2 s each time.
            answer = await to_thread.run_sync(lambda: exact_json(ask()), limiter=self.watches.limiter)
            self.took = time.monotonic() - started
            self.answered = time.monotonic()
        return answer

    def rest(self) -> float:
        """How long to wait before answering again: as long as the last answer took, less the time
        since. A watch then spends at most half its time answering, however often its partition
        moves: five watches of a heavy query, woken by every small event of their tenant, held
        every watch thread and slowed other tenants' watches from 0.3 s to 5 s."""
        return max(0.0, self.answered + self.took - time.monotonic())

    async def _allowed(self) -> bool:
        """The caller's key still holds (revoked: no); an outage while checking it ends nothing."""
        _, _, token = self.authorization.partition(" ")
        try:
            return await self.watches.platform.verify(token.strip()) is not None
        except (LookupsBusy, StoreUnavailable, *EVENT_STORE_AWAY):
            return True

    def _problem(self, problem: Problem) -> bytes:
        return sse("problem", problem_body(self.instance, problem))

    def _revoked(self) -> bytes:
        return self._problem(Problem(401, "Unauthorized", "The API key was revoked.", kind="unauthorized"))

    async def events(self, first: bytes, ask: Callable[[], dict[str, Any]], held: str | None) -> AsyncIterator[bytes]:
        """The stream: `first`, then each new answer, until the watch's time is up, the client
        leaves (the server cancels this), or the API stops."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.watches.seconds
        closing = asyncio.ensure_future(self.watches.closing.wait())
        moved: asyncio.Future[bool] | None = None
        try:
            yield f"retry: {RECONNECT_MS}\n\n".encode()
            body = first
            while True:
                ident = answer_id(body)
                if ident != held:
                    yield sse("usage", body, ident)
                    held = ident
                while True:  # until the partition moves, with a comment line and a key check meanwhile
                    left = ends - loop.time()
                    if left <= 0 or closing.done():
                        return
                    wait = min(HEARTBEAT_SECONDS, left)
                    moved = asyncio.ensure_future(self.watches.pulse.moved(self.partition, self.since, wait))
                    await asyncio.wait({moved, closing}, return_when=asyncio.FIRST_COMPLETED)
                    if closing.done():
                        return
                    if moved.result():
                        break
                    if loop.time() >= ends:
                        return
                    if not await self._allowed():
                        yield self._revoked()
                        return
                    yield b": watching\n\n"
                # Checked before each new answer too: a tenant whose usage keeps moving never leaves
                # the wait above quietly, and a revoked key must not read it meanwhile.
                if not await self._allowed():
                    yield self._revoked()
                    return
                rest = min(self.rest(), HEARTBEAT_SECONDS, ends - loop.time())
                if rest > 0:
                    await asyncio.wait({closing}, timeout=rest)
                    if closing.done() or loop.time() >= ends:
                        return
                try:
                    body = await self.answer(ask)
                except Problem as problem:
                    yield self._problem(problem)
                    return
                except NotFound as gone:  # the meter was deleted meanwhile
                    yield self._problem(Problem(404, "Not found", str(gone), kind="not-found"))
                    return
                except (StoreUnavailable, *EVENT_STORE_AWAY):
                    yield self._problem(store_unavailable())
                    return
        finally:
            closing.cancel()
            if moved is not None:
                moved.cancel()
            self.close()
