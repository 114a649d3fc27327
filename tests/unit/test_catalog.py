"""The catalog view's changes per control-plane event: projections.catalog.changes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from pydantic import ValidationError

from commands.control_plane import AUDIT_TYPE, PLATFORM, CommandContext, ControlPlane, describe
from projections.catalog import KeyAdded, KeyRevoked, MeterAdded, TenantAdded, changes, store_position
from schemas.envelope import Envelope
from schemas.meters import Aggregation, MeterDefinition
from schemas.topics import STORE_POSITION

AT = datetime(2024, 5, 1, 14, 30, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
AT_TEXT = "2024-05-01T12:30:00.250000Z"


def control(type_: str, data: object, *, id_: str = "evt-1", tenant: str = PLATFORM) -> Envelope:
    return Envelope(
        id=id_,
        type=type_,
        tenant_id=tenant,
        source="omni://control",
        source_id=id_,
        event_time=AT,
        recorded_time=AT + timedelta(seconds=1),
        data=data,
    )


def test_tenant_created():
    event = control("omni.tenant.created", {"tenant_id": "t-1", "name": "acme", "plan": "pro"})
    assert changes(event) == [TenantAdded("t-1", "acme", "pro", AT_TEXT)]


def test_api_key_issued_with_and_without_label():
    event = control("omni.api_key.issued", {"key_id": "k1", "tenant_id": "t-1", "label": "ci"})
    assert changes(event) == [KeyAdded("k1", "t-1", "ci", AT_TEXT)]
    event = control("omni.api_key.issued", {"key_id": "k1", "tenant_id": "t-1"})
    assert changes(event) == [KeyAdded("k1", "t-1", None, AT_TEXT)]


def test_api_key_revoked():
    event = control("omni.api_key.revoked", {"key_id": "k1", "tenant_id": "t-1"})
    assert changes(event) == [KeyRevoked("k1", AT_TEXT)]


def test_meter_defined():
    definition = {
        "slug": "tokens",
        "event_type": "inference",
        "aggregation": "SUM",
        "value_property": "$.data.tokens",
        "group_by": {"model": "$.data.model"},
        "description": None,
    }
    (change,) = changes(control("omni.meter.defined", {"slug": "tokens", "definition": definition}, id_="evt-42"))
    assert isinstance(change, MeterAdded)
    assert change.event_id == "evt-42"
    assert change.definition == MeterDefinition.model_validate(definition)
    assert change.definition.aggregation is Aggregation.SUM


def test_meter_defined_with_an_invalid_definition_raises():
    bad = {"slug": "tokens", "event_type": "inference", "aggregation": "COUNT", "value_property": "$.data.tokens"}
    with pytest.raises(ValidationError):
        changes(control("omni.meter.defined", {"slug": "tokens", "definition": bad}))


@pytest.mark.parametrize(
    "type_, data",
    [
        (AUDIT_TYPE, {"action": "tenant.create", "outcome": "accepted"}),
        ("omni.unknown.thing", {"tenant_id": "x"}),
        ("omni.tenant.deleted", {"tenant_id": "x"}),
        ("inference", None),
        ("", None),
        ("OMNI.TENANT.CREATED", {"tenant_id": "t", "name": "n", "plan": "p"}),
    ],
)
def test_other_types_change_nothing(type_, data):
    assert changes(control(type_, data)) == []


def test_what_the_control_plane_publishes_is_what_the_catalog_reads():
    """describe() output (the outbox payloads) feeds changes() without loss."""
    app = ControlPlane(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    admin = CommandContext()
    tenant, default_key = app.create_tenant(admin, "acme", "pro")
    extra = app.issue_key(admin, str(tenant.id), label="ci")
    app.revoke_key(admin, extra.key_id)
    definition = MeterDefinition(slug="calls", event_type="api_call", aggregation="COUNT", group_by={"route": "$.data.route"})
    app.define_meter(admin, definition)

    found = []
    for n, notification in enumerate(app.recorder.select_notifications(1, 100)):
        domain_event = app.mapper.to_domain_event(notification)
        log_type, tenant_id, payload = describe(domain_event)
        found.extend(changes(control(log_type, payload, id_=f"evt-{n}", tenant=tenant_id)))

    tenants = [c for c in found if isinstance(c, TenantAdded)]
    keys = [c for c in found if isinstance(c, KeyAdded)]
    revoked = [c for c in found if isinstance(c, KeyRevoked)]
    meters = [c for c in found if isinstance(c, MeterAdded)]
    assert [(t.tenant_id, t.name, t.plan) for t in tenants] == [(str(tenant.id), "acme", "pro")]
    assert [(k.key_id, k.tenant_id, k.label) for k in keys] == [
        (default_key.key_id, str(tenant.id), "default"),
        (extra.key_id, str(tenant.id), "ci"),
    ]
    assert [r.key_id for r in revoked] == [extra.key_id]
    assert [m.definition for m in meters] == [definition]
    assert len(found) == 5  # audit entries change nothing


def test_the_store_position_is_a_relayed_events_integer_position_or_zero():
    def relayed(extensions: dict[str, object]) -> Envelope:
        return msgspec.structs.replace(control("omni.tenant.created", {}), extensions=extensions)

    assert store_position(relayed({STORE_POSITION: 7})) == 7
    assert store_position(relayed({})) == 0  # relayed by older code: none
    for unusable in ("7", 7.0, True, None):  # only an integer is a position (True is an int to Python)
        assert store_position(relayed({STORE_POSITION: unusable})) == 0, unusable
