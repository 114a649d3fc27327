"""Webhook deliveries: every notice, POSTed to each endpoint of its owner, signed, retried, in order.

Two steps, in the one process that leads them (a PostgreSQL advisory lock in Kafka mode; in
embedded mode the one process):

1. The fan-out reads the event store in its own order, from a tracked position (as the outbox
   relay does): an endpoint added or deleted (`webhook_targets`, with its sealed secret) and each
   notice, queued for every open endpoint of its owner (`webhook_deliveries`, `seq` the notice's
   store position), in one views transaction with the new position. An endpoint gets exactly the
   notices stored after it, and a restart resumes from the position: nothing skipped, nothing queued
   twice.
2. The deliverer sends each open endpoint its oldest pending delivery when it is due, one at a time
   per endpoint (so in order), at most OMNI_WEBHOOKS_CONCURRENCY endpoints at once, each attempt
   bounded by OMNI_WEBHOOKS_TIMEOUT_SECONDS: an endpoint that hangs or fails holds up only itself.
   A 2xx is delivered; anything else (another status, a redirect, a timeout, a refused address) is
   tried again after the schedule's next pause, and given up (failed) once it is spent. Each
   attempt and its outcome are stored; one cut short by a crash was not, and is made again (at
   least once: receivers de-duplicate on `webhook-id`).

The host's addresses are checked when connecting (GuardedResolver), so a name that now resolves to a
private address is refused then (DNS rebinding); the connection goes to the addresses checked.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from eventsourcing.utils import get_topic

from commands.control_plane import ControlPlane
from commands.notices import Notice
from commands.webhooks import SecretBox, WebhookEndpoints, secret_aad
from omni import metrics
from omni.settings import Settings
from projections.webhooks import attempt_error, headers, message, retry_delay
from schemas.envelope import format_time
from schemas.webhooks import address_problem, url_problem
from stores import views
from stores import webhooks as store
from stores.database import Database, StoreUnavailable
from streams.pausing import pause

log = logging.getLogger(__name__)

LEADER = "webhooks"
FANOUT = "webhooks-fanout"  # its row of relay_positions: the event-store position fanned out so far
IDLE_SECONDS = 0.5
MIN_PAUSE = 0.01
PRUNE_EVERY_SECONDS = 3600.0  # the leader deletes what is past keeping this often (and as it starts leading)
PRUNE_BATCH = 1000  # deliveries a transaction deletes at most
PRUNE_BATCHES = 20  # transactions a prune makes at most in one turn of the loop
PRUNE_AGAIN_SECONDS = 10.0  # when a prune that left a backlog comes back for more
LEASE_MARGIN_SECONDS = 30.0  # an attempt's lease outlasts its time limit by this (recording it, a slow thread)
SHUTDOWN_GRACE_SECONDS = 2.0  # how long a stopping loop lets its attempts in flight end and be recorded
TOPICS = tuple(
    sorted(
        get_topic(kind)
        for kind in (
            Notice.Emitted,
            WebhookEndpoints.EndpointAdded,
            WebhookEndpoints.EndpointRemoved,
            WebhookEndpoints.SecretRotated,
        )
    )
)
USER_AGENT = "Omni-Webhooks/1"


class GuardedResolver(AbstractResolver):
    """The system's resolver, refusing a name any of whose addresses is not one a webhook may reach
    (schemas.webhooks.address_problem): the connection is made only to addresses checked here."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            problem = address_problem(ip_address(entry["host"]), allow_private=self.allow_private)
            if problem is not None:
                raise OSError(f"{host} resolves to {entry['host']}: {problem}")
        return found

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int | None
    error: str | None


class WebhookDeliveries:
    def __init__(self, settings: Settings, control: ControlPlane, db: Database, box: SecretBox) -> None:
        self.control = control
        self.db = db
        self.box = box
        self.allow_private = settings.webhooks_allow_private
        self.timeout = settings.webhooks_timeout_seconds
        self.schedule = settings.webhooks_retries
        self.concurrency = settings.webhooks_concurrency
        self.keep = timedelta(days=settings.webhooks_keep_days)
        self._next_prune = 0.0  # monotonic: when the leader prunes next
        self._woken = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}

    def wake(self) -> None:
        """Look again now (an attempt ended, a notice was stored) rather than after the idle pause."""
        self._woken.set()

    # 1. The fan-out (blocking: run in a thread) ---------------------------------------------------

    def fan_out_once(self, limit: int = 500) -> int:
        """Queue the notices stored since the last round for their owners' endpoints; return how many
        stored events were read (0: nothing new)."""
        with self.db.transaction() as tx:
            position = views.relay_position(tx, FANOUT)
        top = self.control.recorder.max_notification_id() or 0
        if top <= position:
            return 0
        found = self.control.recorder.select_notifications(position + 1, limit, stop=top, topics=TOPICS)
        # Read up to `top` (the events in between are none of ours), or to the last one read when the page was full.
        reached = found[-1].id if len(found) == limit else top
        now = time.time()
        created_at = format_time(datetime.fromtimestamp(now, UTC))
        with self.db.transaction() as tx:
            if views.relay_position(tx, FANOUT) != position:
                return 0  # another process fanned these out meanwhile (it leads now)
            for notification in found:
                domain_event = self.control.mapper.to_domain_event(notification)
                if isinstance(domain_event, WebhookEndpoints.EndpointAdded):
                    e = domain_event
                    store.open_target(tx, e.endpoint_id, e.owner, e.url, e.sealed_secret)
                elif isinstance(domain_event, WebhookEndpoints.EndpointRemoved):
                    store.close_target(tx, domain_event.endpoint_id)
                elif isinstance(domain_event, WebhookEndpoints.SecretRotated):
                    r = domain_event
                    until = datetime.fromisoformat(r.previous_valid_until).timestamp()
                    store.rotate_target(tx, r.endpoint_id, notification.id, r.sealed_secret, until)
                elif isinstance(domain_event, Notice.Emitted):
                    n = domain_event
                    body = message(n.kind, n.notice_id, n.data).decode()
                    queued = [
                        store.NewDelivery(endpoint_id, notification.id, n.notice_id, n.kind, body)
                        for endpoint_id in store.open_targets_of(tx, n.tenant_id)
                    ]
                    store.enqueue(tx, queued, now, created_at)
            views.set_relay_position(tx, FANOUT, reached)
        return max(len(found), 1)

    # 2. The deliverer --------------------------------------------------------------------------

    def _due(self, limit: int) -> list[store.Due]:
        with self.db.transaction() as tx:
            return store.due(tx, time.time(), limit)

    def _until_due(self) -> float:
        """How long the loop may pause: until the next delivery is due, at most IDLE_SECONDS (an
        attempt in flight wakes it when it ends)."""
        if self._in_flight:
            return IDLE_SECONDS
        with self.db.transaction() as tx:
            at = store.next_due_at(tx)
        return IDLE_SECONDS if at is None else max(MIN_PAUSE, min(IDLE_SECONDS, at - time.time()))

    async def deliver_once(self, session: aiohttp.ClientSession) -> int:
        """Start an attempt for each endpoint whose next delivery is due (none already in flight, at
        most `concurrency` at once); return how many were started."""
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        started = 0
        for due in await asyncio.to_thread(self._due, free + len(self._in_flight)):
            if started >= free:
                break
            if due.endpoint_id in self._in_flight:
                continue
            task = asyncio.create_task(self._attempt(session, due), name=f"webhook-{due.endpoint_id}")
            self._in_flight[due.endpoint_id] = task
            task.add_done_callback(lambda _, endpoint_id=due.endpoint_id: self._done(endpoint_id))
            started += 1
        return started

    def _done(self, endpoint_id: str) -> None:
        self._in_flight.pop(endpoint_id, None)
        self._woken.set()

    def _lease(self, due: store.Due) -> bool:
        now = time.time()
        with self.db.transaction() as tx:
            return store.lease(tx, due.endpoint_id, due.seq, now, now + self.timeout + LEASE_MARGIN_SECONDS)

    async def _attempt(self, session: aiohttp.ClientSession, due: store.Due) -> None:
        number = due.attempts + 1
        try:
            leased = await asyncio.to_thread(self._lease, due)
        except StoreUnavailable as outage:
            log.warning("webhook %s to %s not attempted: %s", due.notice_id, due.endpoint_id, outage)
            return
        if not leased:
            return  # another process took it, or it settled, since it was found due
        started = time.time()  # the attempt's time, as its `at` (a timeout's came 10 s late)
        outcome = await self.send(session, due)
        error = attempt_error(outcome.status, outcome.error)
        now = time.time()
        if error is None:
            state, next_at, counted = store.DELIVERED, None, "delivered"
        else:
            delay = retry_delay(number, self.schedule)
            state, next_at, counted = (
                (store.FAILED, None, "failed") if delay is None else (store.PENDING, now + delay, "retrying")
            )
            log.info("webhook %s to endpoint %s, attempt %d: %s", due.notice_id, due.endpoint_id, number, error)
        at = format_time(datetime.fromtimestamp(started, UTC))

        def record() -> None:
            with self.db.transaction() as tx:
                store.record_attempt(tx, due.endpoint_id, due.seq, number, at, outcome.status, error, state, next_at)

        try:
            await asyncio.to_thread(record)
        except Exception:  # not recorded: the delivery stays due and is attempted again (at least once)
            log.warning("could not record webhook attempt %d of %s to %s", number, due.notice_id, due.endpoint_id, exc_info=True)
            return
        metrics.WEBHOOK_ATTEMPTS.labels(counted).inc()

    async def send(self, session: aiohttp.ClientSession, due: store.Due) -> Outcome:
        """One attempt: the signed POST, and what came of it."""
        problem = url_problem(due.url, allow_private=self.allow_private)
        if problem is not None:
            return Outcome(None, f"refused: {problem}")
        sealed = [due.sealed_secret, *due.previous_sealed_secrets]
        try:
            keys = [self.box.open_secret(s, secret_aad(due.owner, due.endpoint_id)) for s in sealed]
        except ValueError as unopened:
            return Outcome(None, f"the endpoint's secret cannot be opened: {unopened}")
        body = due.body.encode()
        signed = headers(keys, due.notice_id, int(time.time()), body)
        try:
            async with session.post(
                due.url,
                data=body,
                headers={**signed, "user-agent": USER_AGENT},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                return Outcome(response.status, None)
        except TimeoutError:
            return Outcome(None, f"no answer within {self.timeout:g} s")
        except aiohttp.ClientConnectorError as unreachable:
            return Outcome(None, f"cannot connect: {unreachable.os_error}")
        except aiohttp.ClientError as failed:
            return Outcome(None, f"{type(failed).__name__}: {failed}"[:500])

    def session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allow_private=self.allow_private),
            use_dns_cache=False,  # each connection resolves and checks again
            force_close=True,
            limit=self.concurrency,
        )
        # No cookies kept (one receiver's would reach no other), no proxy from the environment.
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    # 3. Pruning (blocking: run in a thread) -----------------------------------------------------

    def prune_once(self, now: float | None = None, batches: int = PRUNE_BATCHES) -> store.Pruned:
        """Delete the deliveries settled more than `keep` before `now` (with their attempts) and the
        deleted endpoints' rows, a batch a transaction, `batches` at most (the loop's turn is not held
        up by a backlog: it comes back for the rest, PRUNE_AGAIN_SECONDS later)."""
        moment = time.time() if now is None else now
        cutoff = format_time(datetime.fromtimestamp(moment, UTC) - self.keep)
        with self.db.transaction() as tx:
            store.drop_expired_secrets(tx, moment)
        deliveries = endpoints = 0
        for _ in range(batches):
            with self.db.transaction() as tx:
                pruned = store.prune(tx, cutoff, PRUNE_BATCH)
            deliveries += pruned.deliveries
            endpoints += pruned.endpoints
            if not (pruned.deliveries or pruned.endpoints):
                break
        else:
            self._next_prune = time.monotonic() + PRUNE_AGAIN_SECONDS
        if deliveries or endpoints:
            log.info(
                "webhooks: pruned %d deliveries settled before %s, and %d deleted endpoints' rows", deliveries, cutoff, endpoints
            )
        return store.Pruned(deliveries, endpoints)

    # The loop ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fan out and deliver until stopped. Many processes may run this; one leads."""
        leadership = self.db.leadership(LEADER)
        session = self.session()
        try:
            while not stop.is_set():
                if not await asyncio.to_thread(leadership.hold):
                    # Another process leads: it sends from now on. The attempts already sent end and
                    # are recorded (each is leased: the new leader does not send it again meanwhile).
                    await self._settle_in_flight(self.timeout + 1.0)
                    await pause(stop, 1.0)
                    continue
                self._woken.clear()
                moved = 0
                wait = IDLE_SECONDS
                try:
                    moved += await asyncio.to_thread(self.fan_out_once)
                    moved += await self.deliver_once(session)
                    if time.monotonic() >= self._next_prune:
                        # Scheduled first: a prune that fails (or leaves a backlog) is not retried at every turn.
                        self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                        await asyncio.to_thread(self.prune_once)
                    if not moved:
                        wait = await asyncio.to_thread(self._until_due)
                except StoreUnavailable as outage:
                    log.warning("webhooks waiting: %s", outage)
                    wait = 1.0
                except Exception:
                    log.exception("webhooks failed; retrying")
                    wait = 1.0
                if not moved:
                    await pause(stop, wait, self._woken)
        finally:
            await self._settle_in_flight(SHUTDOWN_GRACE_SECONDS)
            await session.close()
            await asyncio.to_thread(leadership.release)

    async def _settle_in_flight(self, wait: float) -> None:
        """Let the attempts in flight end and be recorded, for `wait` seconds at most; then cancel the
        rest (sent, maybe received, not recorded: each is sent again once its lease ends, at least once)."""
        tasks = list(self._in_flight.values())
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=wait)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._in_flight.clear()
