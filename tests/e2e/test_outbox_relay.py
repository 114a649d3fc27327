"""The outbox relay: a crash between "stored" and "published" loses nothing; a crash
between "published" and "position saved" republishes, and the views absorb it."""

from __future__ import annotations

from pathlib import Path

from commands.control_plane import CommandContext
from omni.bootstrap import build
from schemas.envelope import decode
from schemas.meters import MeterDefinition
from stores import views
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
    assert types == ["omni.tenant.created", "omni.api_key.issued", "omni.meter.defined"]
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
    assert len(records) == 6  # every control event twice on the log
    assert len({decode(r.value).id for r in records}) == 3  # with the same ids
    with platform.db.transaction() as tx:
        assert len(views.tenants(tx, 100, None)) == 1
        assert len(views.keys_of(tx, str(tenant.id))) == 1
        assert [m.slug for m in views.meter_definitions(tx)] == ["calls"]
    await platform.stop()
