"""The outbox relay: every event stored in the control-plane event store reaches the log.

The event store's notification log is the outbox. The relay reads from its
tracked position, publishes, then advances the position: a crash between
"stored" and "published" loses nothing. A crash between "published" and
"position saved" would publish those events again; so a process that starts
leading first reads the last record of each partition of its topics (each
carries its store position) and leaves out what the log already holds. The
folds absorb a repeat anyway (their writes are idempotent and the envelope id
is derived from the stored event), but the notifications topic is read by
others, who are promised each notice once.

The leader polls the event store while events keep coming, and less often as
it stays idle (every IDLE_FIRST seconds, doubling up to IDLE_MAX). A process
that stores a command's events calls `wake()`, so they are published at once
whatever the pause; commands stored by another process wait for its relay, or
for the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid5

from commands.control_plane import AUDIT_TYPE, ControlPlane, describe
from commands.ids import OMNI_NAMESPACE
from commands.notices import NOTICE_TYPES
from omni import failpoints, metrics
from schemas.envelope import Envelope, NewerSchema, decode, encode
from schemas.topics import STORE_POSITION, Topics, partition_for
from stores import views
from stores.database import Database, Leadership, StoreUnavailable
from streams.log import EventLog, LogUnavailable, Outgoing, outgoing
from streams.pausing import Pause, pause

log = logging.getLogger(__name__)

SOURCE = "omni://control-plane"
RELAY = "control-outbox"
IDLE_FIRST, IDLE_MAX = 0.05, 1.0


def to_envelope(domain_event: Any, position: int | None = None) -> Envelope:
    """The log's envelope for a stored event; `position` is its notification id in the store."""
    kind, tenant_id, data = describe(domain_event)
    identity = f"{domain_event.originator_id}/{domain_event.originator_version}"
    return Envelope(
        id=str(uuid5(OMNI_NAMESPACE, identity)),
        type=kind,
        tenant_id=tenant_id,
        source=SOURCE,
        source_id=identity,
        event_time=domain_event.timestamp,
        recorded_time=domain_event.timestamp,
        data=data,
        extensions={} if position is None else {STORE_POSITION: position},
    )


class OutboxRelay:
    def __init__(
        self,
        control: ControlPlane,
        log_: EventLog,
        db: Database,
        topics: Topics,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        pause_: Pause = pause,
    ) -> None:
        self.control = control
        self.log = log_
        self.db = db
        self.topic = topics.control
        self.audit_topic = topics.audit
        self.notifications_topic = topics.notifications
        self.sleep = sleep  # the wait after a failed round
        self.pause = pause_  # the idle wait between rounds
        self._woken = asyncio.Event()
        # While leading: per topic, each partition's count and the store position of its last record,
        # read from the log when this process began to lead (None: not read yet).
        self._published: dict[str, tuple[int, dict[int, int]]] | None = None

    def wake(self) -> None:
        """Something was just stored: poll now rather than after the idle pause. Call on the loop."""
        self._woken.set()

    def _pending(self, limit: int) -> tuple[int, list[Envelope]]:
        with self.db.transaction() as tx:
            position = views.relay_position(tx, RELAY)
        notifications = self.control.recorder.select_notifications(position + 1, limit)
        if not notifications:
            return position, []
        envelopes = [to_envelope(self.control.mapper.to_domain_event(n), n.id) for n in notifications]
        return notifications[-1].id, envelopes

    def _advance(self, position: int) -> None:
        with self.db.transaction() as tx:
            views.set_relay_position(tx, RELAY, position)

    async def _read_published(self) -> dict[str, tuple[int, dict[int, int]]]:
        """Per topic: its partition count, and each partition's last record's store position."""
        published: dict[str, tuple[int, dict[int, int]]] = {}
        for topic in (self.topic, self.audit_topic, self.notifications_topic):
            ends = await self.log.end_offsets(topic)
            last: dict[int, int] = {}
            for partition, end in ends.items():
                if end <= 0:
                    continue
                for record in await self.log.read(topic, partition, end - 1, 1):
                    try:
                        position = decode(record.value).extensions.get(STORE_POSITION)
                    except (ValueError, NewerSchema):
                        continue  # not one of ours to judge by: publish as before
                    if isinstance(position, int):
                        last[partition] = position
            published[topic] = (len(ends), last)
        return published

    def _destination(self, envelope: Envelope) -> tuple[str, str]:
        """(topic, key): audit entries and notices by tenant on their topics, the rest by id on the control topic."""
        if envelope.type == AUDIT_TYPE:
            return self.audit_topic, envelope.tenant_id
        if envelope.type in NOTICE_TYPES:
            return self.notifications_topic, envelope.tenant_id
        return self.topic, envelope.id

    def _unpublished(self, topic: str, key: str, position: int) -> bool:
        """Whether the log lacks the event at `position` for `topic` under `key` (what this process read when it began to lead)."""
        assert self._published is not None
        partitions, last = self._published.get(topic, (0, {}))
        if not partitions:
            return True
        return position > last.get(partition_for(key, partitions), 0)

    async def relay_once(self, limit: int = 500) -> int:
        """Publish the next stored events; return how many."""
        position, envelopes = await asyncio.to_thread(self._pending, limit)
        if not envelopes:
            return 0
        if self._published is None:
            self._published = await self._read_published()
        by_topic: dict[str, list[Outgoing]] = {self.topic: [], self.audit_topic: [], self.notifications_topic: []}
        for e in envelopes:
            topic, key = self._destination(e)
            if self._unpublished(topic, key, int(e.extensions.get(STORE_POSITION, 0))):
                try:
                    value = encode(e)
                except TypeError as unencodable:  # orjson: an integer past 64 bits, stored by an earlier version
                    # Set aside, never retried: the relay stopped on it for good, and every tenant's
                    # commands with it (their views never saw them). The event stays in the store.
                    log.error(
                        "outbox relay sets aside stored event %s (%s): it cannot go on the log: %s", e.id, e.type, unencodable
                    )
                    metrics.OUTBOX_SET_ASIDE.inc()
                    continue
                by_topic[topic].append(outgoing(key, e, value))
        try:
            failpoints.hit(failpoints.RELAY_BEFORE_PUBLISH)
            for topic, items in by_topic.items():
                if items:
                    await self.log.append(topic, items)
            failpoints.hit(failpoints.RELAY_AFTER_PUBLISH)
            await asyncio.to_thread(self._advance, position)
        except BaseException:
            self._published = None  # some of it may be on the log, its position not saved: read the log again first
            raise
        return len(envelopes)

    async def run(self, stop: asyncio.Event, idle: float = IDLE_FIRST, idle_max: float = IDLE_MAX) -> None:
        """Relay until stopped. Many processes may run this; one leads, the others stand by."""
        leadership = self.db.leadership(RELAY)
        try:
            await self._relay_while_leading(stop, leadership, idle, idle_max)
        finally:
            leadership.release()

    async def _relay_while_leading(self, stop: asyncio.Event, leadership: Leadership, idle: float, idle_max: float) -> None:
        idle_for = idle
        while not stop.is_set():
            if not await asyncio.to_thread(leadership.hold):
                self._published = None  # another process may publish meanwhile: read the log again on leading
                await self.pause(stop, 1.0)
                continue
            self._woken.clear()  # before reading: a wake while we read is kept for the pause below
            try:
                moved = await self.relay_once()
            except (LogUnavailable, StoreUnavailable) as outage:  # expected while a dependency is away: no traceback
                log.warning("outbox relay waiting: %s", outage)
                moved = 0
                await self.sleep(1.0)
            except Exception:
                log.exception("outbox relay failed; retrying")
                moved = 0
                await self.sleep(1.0)
            if moved:
                idle_for = idle
                continue
            if await self.pause(stop, idle_for, self._woken):
                idle_for = idle
            else:
                idle_for = min(idle_for * 2, idle_max)
