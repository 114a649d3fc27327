"""The outbox relay: a crash between "stored" and "published" loses nothing; a crash
between "published" and "position saved" republishes, and the views absorb it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from commands.control_plane import CommandContext
from omni.bootstrap import build
from schemas.envelope import decode
from schemas.meters import MeterDefinition
from stores import suspensions, views
from streams.outbox import RELAY
from tests.e2e.conftest import embedded_settings

CTX = CommandContext(key_id="admin")


async def control_records(platform) -> list:  # type: ignore[no-untyped-def]
    return await platform.log.read(platform.topics.control, 0, 0, 10_000)


async def test_events_stored_before_a_crash_are_published_after_restart(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path / "data")
    first = build(settings)
    await first.start(background=False)
    tenant, _ = first.control.create_tenant(CTX, "acme", "pro")
    first.control.define_meter(CTX, MeterDefinition(slug="calls", event_type="call", aggregation="COUNT"))
    # The process dies here: stored in the event store, never relayed.
    assert await control_records(first) == []
    await first.stop()

    second = build(settings)
    await second.start(background=False)
    await second.settle()
    types = [decode(r.value).type for r in await control_records(second)]
    assert types == ["omni.tenant.created", "omni.api_key.issued", "omni.key_ring.opened", "omni.meter.defined"]
    audit = await second.log.read(second.topics.audit, 0, 0, 100) + [
        r for p in range(1, second.topics.usage_partitions) for r in await second.log.read(second.topics.audit, p, 0, 100)
    ]
    assert sorted(decode(r.value).data["action"] for r in audit) == ["meter.define", "tenant.create"]
    with second.db.transaction() as tx:
        assert views.tenant(tx, str(tenant.id)) is not None
        assert [m.slug for m in views.meter_definitions(tx)] == ["calls"]
    await second.stop()


async def test_a_republished_batch_changes_no_view(tmp_path: Path) -> None:
    platform = build(embedded_settings(tmp_path / "data"))
    await platform.start(background=False)
    tenant, _ = platform.control.create_tenant(CTX, "acme", "pro")
    platform.control.define_meter(CTX, MeterDefinition(slug="calls", event_type="call", aggregation="COUNT"))
    await platform.settle()
    # Published, but the position was never saved: the next relay publishes it all again.
    with platform.db.transaction() as tx:
        views.set_relay_position(tx, RELAY, 0)
    await platform.settle()
    records = await control_records(platform)
    assert len(records) == 8  # every control event twice on the log
    assert len({decode(r.value).id for r in records}) == 4  # with the same ids
    with platform.db.transaction() as tx:
        assert len(suspensions.tenants(tx, 100, None, None)) == 1
        assert len(views.keys_of(tx, str(tenant.id))) == 1
        assert [m.slug for m in views.meter_definitions(tx)] == ["calls"]
    await platform.stop()


async def test_an_idle_relay_polls_less_often_but_a_wake_publishes_at_once(tmp_path: Path) -> None:
    platform = build(embedded_settings(tmp_path / "data"))
    await platform.start(background=False)
    stop = asyncio.Event()
    relay = asyncio.create_task(platform.relay.run(stop, idle=0.05, idle_max=2.0))
    try:
        await asyncio.sleep(2.5)  # idle since the start: its pause has grown to 2 s

        platform.control.create_tenant(CTX, "woken", "pro")  # stored, and no one says so
        await asyncio.sleep(0.3)
        assert await control_records(platform) == []  # still in its pause

        platform.relay.wake()  # what the API does after every command
        await wait_until(lambda: control_records(platform), within=0.5)

        await asyncio.sleep(2.5)  # idle again
        platform.control.create_tenant(CTX, "polled", "pro")
        await wait_until(lambda: _tenants_published(platform, 2), within=2.5)  # the next poll finds it
    finally:
        stop.set()
        await relay
        await platform.stop()


async def _tenants_published(platform, count: int) -> bool:  # type: ignore[no-untyped-def]
    records = await control_records(platform)
    return sum(decode(r.value).type == "omni.tenant.created" for r in records) >= count


async def wait_until(check, within: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within} s"
        await asyncio.sleep(0.01)


async def test_a_relay_process_watches_no_keys(tmp_path: Path) -> None:
    """`omni relay` authenticates no one: it does not watch the store's key changes."""
    relay = build(embedded_settings(tmp_path / "data"))
    await relay.start(background=False, watch_keys=False)
    try:
        assert not relay.keys.trusted
    finally:
        await relay.stop()
    api = build(embedded_settings(tmp_path / "data"))
    await api.start(background=False)
    try:
        assert api.keys.trusted  # what an API process does, for contrast
    finally:
        await api.stop()
