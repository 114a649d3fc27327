"""The outbox relay over the embedded log and the SQLite event store, without a platform around it:
what it publishes where (control events keyed by their id on the control topic, audit entries keyed
by tenant on the audit topic), the envelope it derives from a stored event, the position it keeps,
what a crash before or after publishing leaves, and its loop (a wake, an outage, a failure)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import uuid4, uuid5

import pytest
from prometheus_client import REGISTRY

from commands.control_plane import AUDIT_TYPE, CommandContext, ControlPlane
from commands.ids import OMNI_NAMESPACE
from omni import failpoints
from omni.bootstrap import event_store_env
from omni.settings import Settings
from projections.quotas import THRESHOLD_CROSSED, Crossing, PeriodKey
from schemas.envelope import decode, record_headers
from schemas.meters import MeterDefinition
from schemas.slos import SloBody
from schemas.topics import STORE_POSITION, Topics, partition_for
from stores import quotas as quota_views
from stores import views
from stores.database import SqliteDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA
from streams.embedded_log import EmbeddedLog
from streams.notices import NoticesRelay
from streams.outbox import RELAY, SOURCE, OutboxRelay, to_envelope
from tests.loop_waits import Waits

CTX = CommandContext(key_id="admin")
TOPICS = Topics(prefix="relay", usage_partitions=3)


@dataclass
class Setup:
    control: ControlPlane
    log: EmbeddedLog
    db: SqliteDatabase
    relay: OutboxRelay

    def position(self) -> int:
        with self.db.transaction() as tx:
            return views.relay_position(tx, RELAY)

    async def control_records(self):  # type: ignore[no-untyped-def]
        return await self.log.read(TOPICS.control, 0, 0, 1000)

    async def audit_records(self):  # type: ignore[no-untyped-def]
        return [r for p in range(TOPICS.usage_partitions) for r in await self.log.read(TOPICS.audit, p, 0, 1000)]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    failpoints.disarm_all()
    control = ControlPlane(env=event_store_env(Settings(mode="embedded", data_dir=tmp_path)))
    log = EmbeddedLog(tmp_path / "log.sqlite", TOPICS)
    await log.start()
    db = SqliteDatabase(tmp_path / "views.sqlite")
    db.migrate(VIEW_SCHEMA)
    yield Setup(control, log, db, OutboxRelay(control, log, db, TOPICS))
    failpoints.disarm_all()
    await log.close()
    db.close()
    control.close()


def stored(control: ControlPlane) -> list:  # type: ignore[type-arg]
    notifications = control.recorder.select_notifications(start=1, limit=1000)
    return [(n.id, control.mapper.to_domain_event(n)) for n in notifications]


def test_the_envelope_of_a_stored_event_is_derived_from_its_identity(tmp_path: Path) -> None:
    control = ControlPlane(env=event_store_env(Settings(mode="embedded", data_dir=tmp_path)))
    try:
        tenant, _ = control.create_tenant(CTX, "acme", "pro")
        (position, created), *_ = stored(control)
        identity = f"{created.originator_id}/{created.originator_version}"
        envelope = to_envelope(created, position)
        assert envelope.id == str(uuid5(OMNI_NAMESPACE, identity))
        assert (envelope.type, envelope.tenant_id, envelope.source, envelope.source_id) == (
            "omni.tenant.created",
            str(tenant.id),
            SOURCE,
            identity,
        )
        assert envelope.event_time == envelope.recorded_time == created.timestamp
        assert envelope.data["name"] == "acme"
        assert envelope.extensions == {STORE_POSITION: position}
        assert to_envelope(created).extensions == {}
        assert to_envelope(created).id == envelope.id  # the same event always gets the same id
    finally:
        control.close()


async def test_every_stored_event_is_published_once_to_its_topic_and_the_position_follows(setup: Setup) -> None:
    tenant, _ = setup.control.create_tenant(CTX, "acme", "pro")
    setup.control.define_meter(CTX, MeterDefinition(slug="calls", event_type="call", aggregation="COUNT"))
    events = stored(setup.control)
    assert setup.position() == 0

    assert await setup.relay.relay_once() == len(events)
    assert setup.position() == events[-1][0]
    assert await setup.relay.relay_once() == 0  # nothing new: nothing published again

    control = await setup.control_records()
    expected = [to_envelope(e, position) for position, e in events if to_envelope(e).type != AUDIT_TYPE]
    assert [decode(r.value) for r in control] == expected
    assert [r.key for r in control] == [e.id for e in expected]  # keyed by the envelope's id
    assert [r.headers for r in control] == [record_headers(e) for e in expected]
    assert [e.type for e in expected] == [
        "omni.tenant.created",
        "omni.api_key.issued",
        "omni.key_ring.opened",
        "omni.meter.defined",
    ]

    audit = await setup.audit_records()
    entries = [to_envelope(e, position) for position, e in events if to_envelope(e).type == AUDIT_TYPE]
    assert len(entries) == 2
    assert sorted(decode(r.value).id for r in audit) == sorted(e.id for e in entries)
    for r in audit:  # keyed by tenant: one tenant's entries keep their order
        assert r.partition == partition_for(r.key, TOPICS.usage_partitions)
        assert r.key == decode(r.value).tenant_id
    assert {r.key for r in audit} <= {str(tenant.id), "_platform"}


async def test_an_event_the_log_cannot_hold_is_set_aside_and_the_rest_go_on(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """An SLO whose `match` held an integer past 64 bits (taken before the body refused it) was
    stored, and the relay stopped on it for good: every command after it, of every tenant, never
    reached the views."""
    body = SloBody.model_construct(  # as an earlier version took it, behind today's validation
        **SloBody.model_validate(
            {"event_type": "t", "sli": "availability", "status_property": "$.data.s", "objective": 99, "window": "7d"}
        ).__dict__
        | {"match": {"$.data.k": 10**30}}
    )
    setup.control.put_slo(CTX, "poison", body)
    setup.control.define_meter(CTX, MeterDefinition(slug="calls", event_type="call", aggregation="COUNT"))
    before = REGISTRY.get_sample_value("omni_outbox_set_aside_total") or 0
    with caplog.at_level(logging.ERROR, logger="streams.outbox"):
        assert await setup.relay.relay_once() == len(stored(setup.control))
    assert setup.position() == stored(setup.control)[-1][0]
    published = [decode(r.value).type for r in await setup.control_records()]
    assert "omni.meter.defined" in published and "omni.slo.defined" not in published, published
    assert REGISTRY.get_sample_value("omni_outbox_set_aside_total") == before + 1
    assert "sets aside stored event" in caplog.text and "omni.slo.defined" in caplog.text


async def test_the_relay_publishes_at_most_its_limit_at_a_time(setup: Setup) -> None:
    setup.control.create_tenant(CTX, "acme", "pro")
    events = stored(setup.control)
    assert len(events) == 4  # tenant created, key issued, its key ring opened, audit entry
    assert await setup.relay.relay_once(limit=2) == 2
    assert setup.position() == events[1][0]
    assert await setup.relay.relay_once(limit=2) == 2
    assert setup.position() == events[3][0]
    assert len(await setup.control_records()) + len(await setup.audit_records()) == 4


async def test_a_crash_before_publishing_publishes_later_and_one_after_publishing_publishes_nothing_again(setup: Setup) -> None:
    """The position is saved after publishing: a crash in between leaves the events on the log and
    the position behind. The relay that leads next (here: a new one, as after a restart; or the same
    after its failure) reads the last record of each partition, skips what is there, and moves on."""
    setup.control.create_tenant(CTX, "acme", "pro")
    failpoints.arm(failpoints.RELAY_BEFORE_PUBLISH)
    with pytest.raises(failpoints.FailpointHit):
        await setup.relay.relay_once()
    assert await setup.control_records() == [] and setup.position() == 0

    failpoints.arm(failpoints.RELAY_AFTER_PUBLISH)
    with pytest.raises(failpoints.FailpointHit):
        await setup.relay.relay_once()
    first = [decode(r.value).id for r in await setup.control_records()]
    assert len(first) == 3 and setup.position() == 0  # on the log, the position not saved

    audited = [decode(r.value).id for r in await setup.audit_records()]
    assert len(audited) == 1

    restarted = OutboxRelay(setup.control, setup.log, setup.db, TOPICS)
    assert await restarted.relay_once() == 4  # read past, published nothing again
    assert [decode(r.value).id for r in await setup.control_records()] == first
    assert [decode(r.value).id for r in await setup.audit_records()] == audited
    assert setup.position() == 4 and await restarted.relay_once() == 0

    setup.control.create_tenant(CTX, "globex", "pro")  # what comes next is published as always
    assert await setup.relay.relay_once() == 4  # the first relay, after its failure: it reads the log again too
    assert len(await setup.control_records()) == 6 and len(await setup.audit_records()) == 2


async def wait_for(check, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), within)


async def test_the_loop_publishes_what_is_stored_at_a_wake_and_rides_out_an_outage_and_a_failure(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "streams.outbox")
    stop = asyncio.Event()
    loop = asyncio.create_task(setup.relay.run(stop, idle=5.0, idle_max=5.0))  # polls seldom: only a wake is quick
    try:
        await asyncio.sleep(0.1)
        setup.control.create_tenant(CTX, "woken", "pro")
        setup.relay.wake()
        await wait_for(lambda: _count(setup, 2), within=2.0)

        failpoints.arm(failpoints.RELAY_BEFORE_PUBLISH)  # a failure: logged, and the loop goes on
        setup.control.create_tenant(CTX, "retried", "pro")
        setup.relay.wake()
        await wait_for(lambda: _logged(caplog, "outbox relay failed; retrying"), within=2.0)
        assert len(await setup.control_records()) == 3
        await asyncio.sleep(1.1)  # its second's pause after a failure
        setup.relay.wake()
        await wait_for(lambda: _count(setup, 4), within=2.0)

        await setup.log.close()  # the log goes away: waited for, without a traceback
        setup.control.create_tenant(CTX, "after", "pro")
        setup.relay.wake()
        await wait_for(lambda: _logged(caplog, "outbox relay waiting: the embedded log is closed"), within=2.0)
        await setup.log.start()
        await asyncio.sleep(1.1)
        setup.relay.wake()
        await wait_for(lambda: _count(setup, 6), within=2.0)
    finally:
        stop.set()
        await asyncio.wait_for(loop, 6.0)
    assert setup.position() == stored(setup.control)[-1][0]


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def _count(setup: Setup, n: int) -> bool:
    return len(await setup.control_records()) >= n


async def test_the_loop_stops_when_told_even_in_a_long_pause(setup: Setup) -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(setup.relay.run(stop, idle=30.0, idle_max=60.0))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(loop, 1.0)


async def test_the_idle_relay_doubles_its_pause_up_to_the_most_and_starts_again_when_woken(setup: Setup) -> None:
    stop = asyncio.Event()

    async def idle() -> None:
        return None

    async def woken() -> None:
        relay.wake()  # a wake in the pause, with nothing stored

    async def stored() -> None:
        setup.control.create_tenant(CTX, "acme", "pro")  # by another process: no wake, found at the next poll

    waits = Waits(stop, [idle] * 6 + [woken, idle, stored, idle, idle])
    relay = OutboxRelay(setup.control, setup.log, setup.db, TOPICS, sleep=waits.sleep, pause_=waits.pause)
    await asyncio.wait_for(relay.run(stop), 5.0)
    assert [seconds for _, seconds in waits.waited] == [
        0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0,  # IDLE_FIRST doubling up to IDLE_MAX
        0.05, 0.1,  # a wake starts it again
        0.05, 0.1,  # so do events published (stored in the pause of 0.1, found by the next poll)
    ]  # fmt: skip
    assert {kind for kind, _ in waits.waited} == {"pause"}
    assert len(await setup.control_records()) == 3


async def test_after_an_outage_or_a_failure_the_relay_waits_a_second_then_pauses_as_at_first(setup: Setup) -> None:
    stop = asyncio.Event()

    async def back_with_a_failing_publish() -> None:
        await setup.log.start()
        failpoints.arm(failpoints.RELAY_BEFORE_PUBLISH)  # the next round fails once

    async def idle() -> None:
        return None

    setup.control.create_tenant(CTX, "acme", "pro")
    waits = Waits(stop, [back_with_a_failing_publish, idle, idle])
    relay = OutboxRelay(setup.control, setup.log, setup.db, TOPICS, sleep=waits.sleep, pause_=waits.pause)
    await setup.log.close()  # the first round meets an outage
    await asyncio.wait_for(relay.run(stop, idle=0.25, idle_max=4.0), 5.0)
    # outage: a second, then the first idle pause; failure: the same, doubled; then the events are
    # published and the relay reads again at once, finds nothing, and pauses from the first again
    assert waits.waited == [("sleep", 1.0), ("pause", 0.25), ("sleep", 1.0), ("pause", 0.5), ("pause", 0.25)]
    assert len(await setup.control_records()) == 3


async def test_a_notice_is_recorded_and_published_once_across_a_crash_after_recording(setup: Setup) -> None:
    """The notices relay stores each notification the folds found as a Notice; the outbox relay
    publishes it on the notifications topic, keyed by tenant. A crash after storing, before the
    view row is marked recorded, records it again: refused as the duplicate it is, published once."""
    month = PeriodKey.parse("M:2026-12")
    crossing = Crossing(str(uuid4()), "tenant-1", "calls", month, 80, Decimal(10), Decimal(8), datetime(2026, 12, 4, tzinfo=UTC))
    with setup.db.transaction() as tx:
        quota_views.add_notifications(tx, [crossing])
    notices = NoticesRelay(setup.control, setup.db)
    failpoints.arm(failpoints.NOTICES_AFTER_RECORD)
    with pytest.raises(failpoints.FailpointHit):
        notices.record_once()
    assert notices.record_once() == 1  # the row again: stored already, now marked
    assert notices.record_once() == 0
    assert await setup.relay.relay_once() == 1
    records = [r for p in range(TOPICS.usage_partitions) for r in await setup.log.read(TOPICS.notifications, p, 0, 100)]
    [record] = records
    event = decode(record.value)
    assert (record.key, event.type, event.tenant_id) == ("tenant-1", THRESHOLD_CROSSED, "tenant-1")
    assert event.data == {
        "id": crossing.id, "tenant_id": "tenant-1", "meter": "calls", "period": month.label, "threshold": 80, "limit": 10,
        "used": 8, "occurred_at": "2026-12-04T00:00:00.000000Z",
    }  # fmt: skip
    assert await setup.control_records() == [] and await setup.audit_records() == []


async def test_a_position_that_could_not_be_saved_publishes_nothing_twice(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Published, then the store is away as the relay saves its position: the next round (the same
    relay, still leading) reads the log again and publishes nothing twice."""
    from stores.database import StoreUnavailable

    setup.control.create_tenant(CTX, "acme", "pro")
    advance = setup.relay._advance

    def away(position: int) -> None:
        raise StoreUnavailable("the views' database is away")

    monkeypatch.setattr(setup.relay, "_advance", away)
    with pytest.raises(StoreUnavailable):
        await setup.relay.relay_once()
    published = [decode(r.value).id for r in await setup.control_records()]
    assert len(published) == 3 and setup.position() == 0

    monkeypatch.setattr(setup.relay, "_advance", advance)
    assert await setup.relay.relay_once() == 4
    assert [decode(r.value).id for r in await setup.control_records()] == published
    assert len(await setup.audit_records()) == 1 and setup.position() == 4
