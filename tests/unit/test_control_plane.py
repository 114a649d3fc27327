"""Control-plane aggregates on eventsourcing's in-memory (POPO) store: commands.control_plane."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from commands.control_plane import (
    AUDIT_TYPE,
    KEY_PREFIX,
    PLATFORM,
    ApiKey,
    AuditEntry,
    CommandContext,
    ControlPlane,
    Meter,
    Principal,
    Tenant,
    describe,
    hash_secret,
    meter_aggregate_id,
    parse_token,
)
from commands.errors import Conflict, NotFound
from schemas.meters import MeterDefinition

ADMIN = CommandContext(key_id=None, ip="127.0.0.1", user_agent="admin-cli", trace_id="trace-admin")


@pytest.fixture
def app() -> ControlPlane:
    return ControlPlane(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def ctx_for(tenant_id: str, key_id: str = "k", **kw: Any) -> CommandContext:
    return CommandContext(
        tenant_id=tenant_id,
        key_id=key_id,
        ip=kw.get("ip", "10.1.2.3"),
        user_agent=kw.get("ua", "sdk/1"),
        trace_id=kw.get("trace", "t-1"),
    )


def stored_events(app: ControlPlane) -> list[Any]:
    return [app.mapper.to_domain_event(n) for n in app.recorder.select_notifications(1, 1000)]


def audits(app: ControlPlane) -> list[Any]:
    return [e for e in stored_events(app) if isinstance(e, AuditEntry.Recorded)]


def meter_def(slug: str = "tokens", **kw: Any) -> MeterDefinition:
    fields = {"slug": slug, "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
    fields.update(kw)
    return MeterDefinition.model_validate(fields)


# --- tenants and keys -----------------------------------------------------------------------


def test_create_tenant_returns_a_usable_key(app):
    tenant, issued = app.create_tenant(ADMIN, "acme", "pro")
    assert isinstance(tenant, Tenant) and (tenant.name, tenant.plan) == ("acme", "pro")
    assert issued.tenant_id == str(tenant.id)
    assert issued.token.startswith(f"{KEY_PREFIX}_{issued.key_id}_")
    assert parse_token(issued.token) == (issued.key_id, issued.token.split("_", 2)[2])
    assert app.authenticate(issued.token) == Principal(tenant_id=str(tenant.id), key_id=issued.key_id, is_admin=False)
    fetched = app.get_tenant(str(tenant.id))
    assert (fetched.name, fetched.plan) == ("acme", "pro")


def test_the_secret_is_stored_only_as_a_hash(app):
    _, issued = app.create_tenant(ADMIN, "acme", "pro")
    secret = issued.token.split("_", 2)[2]
    key = app._get_key(issued.key_id)
    assert isinstance(key, ApiKey)
    assert key.secret_hash == hash_secret(secret) != secret
    for event in stored_events(app):
        assert secret not in repr(event.__dict__)


def test_each_tenant_gets_its_own_keys(app):
    a, key_a = app.create_tenant(ADMIN, "a", "free")
    b, key_b = app.create_tenant(ADMIN, "b", "free")
    assert key_a.key_id != key_b.key_id and key_a.token != key_b.token
    assert app.authenticate(key_a.token).tenant_id == str(a.id)
    assert app.authenticate(key_b.token).tenant_id == str(b.id)


def test_authenticate_rejects_a_wrong_secret(app):
    _, issued = app.create_tenant(ADMIN, "acme", "pro")
    secret = issued.token.split("_", 2)[2]
    assert app.authenticate(f"{KEY_PREFIX}_{issued.key_id}_{secret[:-1]}") is None
    assert app.authenticate(f"{KEY_PREFIX}_{issued.key_id}_{secret}x") is None
    assert app.authenticate(f"{KEY_PREFIX}_{issued.key_id}_{hash_secret(secret)}") is None


def test_authenticate_rejects_an_unknown_key(app):
    _, issued = app.create_tenant(ADMIN, "acme", "pro")
    secret = issued.token.split("_", 2)[2]
    assert app.authenticate(f"{KEY_PREFIX}_0000000000000000_{secret}") is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "omni",
        "omni_",
        "omni__",
        "omni_abc",
        "omni_abc_",
        "omni__secret",
        "xomni_abc_def",
        "OMNI_abc_def",
        "Bearer omni_abc_def",
        "abc_def_ghi",
    ],
)
def test_authenticate_rejects_malformed_tokens(app, token):
    app.create_tenant(ADMIN, "acme", "pro")
    assert app.authenticate(token) is None


def test_malformed_token_variants_of_a_real_key_are_rejected(app):
    _, issued = app.create_tenant(ADMIN, "acme", "pro")
    assert app.authenticate("Bearer " + issued.token) is None
    assert app.authenticate(issued.token.replace(f"{KEY_PREFIX}_", "", 1)) is None
    assert app.authenticate(issued.token.replace(f"{KEY_PREFIX}_", "OMNI_", 1)) is None


def test_a_revoked_key_is_refused_at_once(app):
    tenant, issued = app.create_tenant(ADMIN, "acme", "pro")
    other = app.issue_key(ctx_for(str(tenant.id)), str(tenant.id), label="ci")
    app.revoke_key(ctx_for(str(tenant.id), issued.key_id), issued.key_id)
    assert app.authenticate(issued.token) is None
    assert app.authenticate(other.token) is not None  # only that key


def test_revoking_twice_changes_nothing(app):
    tenant, issued = app.create_tenant(ADMIN, "acme", "pro")
    app.revoke_key(ADMIN, issued.key_id)
    app.revoke_key(ADMIN, issued.key_id)
    assert app.authenticate(issued.token) is None
    revocations = [e for e in stored_events(app) if isinstance(e, ApiKey.Revoked)]
    assert len(revocations) == 1


def test_issue_key_for_own_tenant(app):
    tenant, _ = app.create_tenant(ADMIN, "acme", "pro")
    issued = app.issue_key(ctx_for(str(tenant.id)), str(tenant.id), label="ci")
    assert app.authenticate(issued.token) == Principal(str(tenant.id), issued.key_id)
    assert app._get_key(issued.key_id).label == "ci"


def test_admin_may_issue_keys_for_any_tenant_but_not_for_a_missing_one(app):
    tenant, _ = app.create_tenant(ADMIN, "acme", "pro")
    issued = app.issue_key(ADMIN, str(tenant.id))
    assert app.authenticate(issued.token).tenant_id == str(tenant.id)
    with pytest.raises(NotFound):
        app.issue_key(ADMIN, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFound):
        app.issue_key(ADMIN, "not-a-uuid")
    key_uuid = str(app._get_key(issued.key_id).id)
    with pytest.raises(NotFound):  # an aggregate, but not a tenant
        app.issue_key(ADMIN, key_uuid)


def test_get_tenant_of_something_that_is_not_a_tenant(app):
    app.define_meter(ADMIN, meter_def())
    with pytest.raises(NotFound):
        app.get_tenant(str(meter_aggregate_id("tokens")))


# --- tenancy: another tenant's resources answer NotFound, and the refusal is audited ---------


def test_a_tenant_cannot_revoke_another_tenants_key(app):
    a, key_a = app.create_tenant(ADMIN, "a", "free")
    b, key_b = app.create_tenant(ADMIN, "b", "free")
    ctx_b = ctx_for(str(b.id), key_b.key_id, ip="192.0.2.9", ua="evil/1", trace="trace-b")
    with pytest.raises(NotFound) as caught:
        app.revoke_key(ctx_b, key_a.key_id)
    assert "not found" in str(caught.value)
    assert app.authenticate(key_a.token) is not None
    entry = audits(app)[-1]
    assert (entry.action, entry.resource, entry.outcome) == ("api_key.revoke", f"keys/{key_a.key_id}", "rejected")
    assert entry.tenant_id == str(b.id)  # filed under the caller, not the victim
    assert (entry.actor_key_id, entry.actor_ip, entry.user_agent, entry.trace_id) == (
        key_b.key_id,
        "192.0.2.9",
        "evil/1",
        "trace-b",
    )
    assert entry.reason


def test_a_tenant_cannot_issue_keys_for_another_tenant(app):
    a, _ = app.create_tenant(ADMIN, "a", "free")
    b, key_b = app.create_tenant(ADMIN, "b", "free")
    keys_before = [e for e in stored_events(app) if isinstance(e, ApiKey.Issued)]
    with pytest.raises(NotFound):
        app.issue_key(ctx_for(str(b.id), key_b.key_id), str(a.id), label="sneaky")
    keys_after = [e for e in stored_events(app) if isinstance(e, ApiKey.Issued)]
    assert len(keys_after) == len(keys_before)
    entry = audits(app)[-1]
    assert (entry.action, entry.resource, entry.outcome, entry.tenant_id) == (
        "api_key.issue",
        f"tenants/{a.id}/keys",
        "rejected",
        str(b.id),
    )


def test_unknown_key_revocation_is_not_found_and_audited(app):
    tenant, _ = app.create_tenant(ADMIN, "a", "free")
    with pytest.raises(NotFound):
        app.revoke_key(ctx_for(str(tenant.id)), "doesnotexist")
    entry = audits(app)[-1]
    assert (entry.action, entry.outcome) == ("api_key.revoke", "rejected")


def test_a_race_on_revoke_lost_every_time_is_a_conflict_and_audited(app, monkeypatch):
    """A lost race is redone on what the winner left (commands.limits.ATTEMPTS); one that reads a
    stale key every time gives up."""
    tenant, issued = app.create_tenant(ADMIN, "a", "free")
    stale_unrevoked = copy.deepcopy(app._get_key(issued.key_id))
    app.revoke_key(ADMIN, issued.key_id)
    monkeypatch.setattr(app, "_get_key", lambda key_id: copy.deepcopy(stale_unrevoked))
    before = len(stored_events(app))
    with pytest.raises(Conflict):
        app.revoke_key(ADMIN, issued.key_id)
    new = stored_events(app)[before:]
    assert [type(e).__qualname__ for e in new] == ["AuditEntry.Recorded"]
    assert new[0].outcome == "rejected"


# --- audit of accepted commands ---------------------------------------------------------------


def test_every_accepted_command_is_audited_with_its_context(app):
    tenant, issued = app.create_tenant(ADMIN, "acme", "pro")
    ctx = ctx_for(str(tenant.id), issued.key_id)
    second = app.issue_key(ctx, str(tenant.id))
    app.revoke_key(ctx, second.key_id)
    app.define_meter(ADMIN, meter_def())
    entries = [(e.action, e.resource, e.outcome, e.tenant_id) for e in audits(app)]
    assert entries == [
        ("tenant.create", f"tenants/{tenant.id}", "accepted", str(tenant.id)),
        ("api_key.issue", f"keys/{second.key_id}", "accepted", str(tenant.id)),
        ("api_key.revoke", f"keys/{second.key_id}", "accepted", str(tenant.id)),
        ("meter.define", "meters/tokens", "accepted", PLATFORM),
    ]
    revoke_audit = audits(app)[2]
    assert (revoke_audit.actor_key_id, revoke_audit.actor_ip, revoke_audit.user_agent, revoke_audit.trace_id) == (
        issued.key_id,
        "10.1.2.3",
        "sdk/1",
        "t-1",
    )


def test_record_rejection(app):
    app.record_rejection(CommandContext(ip="1.2.3.4"), "meter.define", "meters/x", "bad input")
    (entry,) = audits(app)
    assert (entry.tenant_id, entry.action, entry.resource, entry.outcome, entry.reason, entry.actor_ip) == (
        PLATFORM,
        "meter.define",
        "meters/x",
        "rejected",
        "bad input",
        "1.2.3.4",
    )


# --- meters -------------------------------------------------------------------------------------


def test_define_meter(app):
    meter = app.define_meter(ADMIN, meter_def(group_by={"model": "$.data.model"}))
    stored = app.repository.get(meter_aggregate_id("tokens"))
    assert isinstance(stored, Meter) and stored.id == meter.id
    assert MeterDefinition.model_validate(stored.definition) == meter_def(group_by={"model": "$.data.model"})


def test_defining_the_same_slug_twice_is_a_conflict(app):
    app.define_meter(ADMIN, meter_def())
    with pytest.raises(Conflict):
        app.define_meter(ADMIN, meter_def(aggregation="MAX"))
    stored = app.repository.get(meter_aggregate_id("tokens"))
    assert stored.definition["aggregation"] == "SUM"  # the first definition stands
    defined = [e for e in stored_events(app) if isinstance(e, Meter.Defined)]
    assert len(defined) == 1
    entry = audits(app)[-1]
    assert (entry.action, entry.resource, entry.outcome) == ("meter.define", "meters/tokens", "rejected")
    assert entry.reason == "409 Conflict"  # the detail, which quotes the command, is the caller's answer alone
    # Only the rejection: the failed save stored no "accepted" audit entry.
    assert [e.outcome for e in audits(app)] == ["accepted", "rejected"]


# --- describe(): what the outbox publishes --------------------------------------------------------

EXPECTED_TYPES = {
    "Tenant.Created": "omni.tenant.created",
    "ApiKey.Issued": "omni.api_key.issued",
    "ApiKey.Revoked": "omni.api_key.revoked",
    "AuditEntry.Recorded": AUDIT_TYPE,
    "Meter.Defined": "omni.meter.defined",
    "KeyRing.Opened": "omni.key_ring.opened",
    "KeyRing.KeyAdded": "omni.key_ring.added",
    "KeyRing.KeyRemoved": "omni.key_ring.removed",
}


def busy_app(app: ControlPlane) -> tuple[ControlPlane, list[str]]:
    a, key_a = app.create_tenant(ADMIN, "a", "free")
    b, key_b = app.create_tenant(ADMIN, "b", "pro")
    extra = app.issue_key(ctx_for(str(a.id)), str(a.id), label="ci")
    app.revoke_key(ctx_for(str(a.id)), extra.key_id)
    with pytest.raises(NotFound):
        app.revoke_key(ctx_for(str(b.id)), key_a.key_id)
    app.define_meter(ADMIN, meter_def())
    with pytest.raises(Conflict):
        app.define_meter(ADMIN, meter_def())
    return app, [t.token for t in (key_a, key_b, extra)]


def test_describe_maps_every_domain_event_type(app):
    app, _ = busy_app(app)
    events = stored_events(app)
    seen = set()
    for event in events:
        kind = type(event).__qualname__
        seen.add(kind)
        log_type, tenant, payload = describe(event)
        assert log_type == EXPECTED_TYPES[kind]
        assert isinstance(payload, dict)
        json.dumps(payload)  # JSON-serialisable as is
        match kind:
            case "Tenant.Created":
                assert tenant == payload["tenant_id"] == str(event.originator_id)
                assert (payload["name"], payload["plan"]) == (event.name, event.plan)
            case "ApiKey.Issued" | "ApiKey.Revoked":
                assert tenant == payload["tenant_id"] == event.tenant_id
                assert payload["key_id"] == event.key_id
            case "AuditEntry.Recorded":
                assert tenant == event.tenant_id
                assert payload["outcome"] in ("accepted", "rejected")
                assert set(payload) == {"action", "resource", "outcome", "reason", "actor", "trace_id"}
            case "KeyRing.Opened":
                assert tenant == payload["tenant_id"] == event.tenant_id and payload["key_ids"] == event.key_ids
            case "KeyRing.KeyAdded" | "KeyRing.KeyRemoved":
                assert tenant == payload["tenant_id"] == event.tenant_id and payload["key_id"] == event.key_id
            case "Meter.Defined":
                assert tenant == PLATFORM
                assert MeterDefinition.model_validate(payload["definition"]).slug == payload["slug"] == "tokens"
    assert seen == set(EXPECTED_TYPES)


def test_describe_never_leaks_secrets(app):
    from datetime import timedelta

    from commands.webhooks import WebhookEndpoints
    from omni.personal_data import MasterKey

    app, tokens = busy_app(app)
    app.secret_box = MasterKey(bytes(range(32)))
    created = app.create_webhook_endpoint(ADMIN, "https://hooks.example/omni", None)
    rotated = app.rotate_webhook_secret(ADMIN, created.endpoint.endpoint_id, timedelta(hours=1))
    secrets_ = [t.split("_", 2)[2] for t in tokens] + [
        created.secret.removeprefix("whsec_"),
        rotated.secret.removeprefix("whsec_"),
    ]
    sealed = [
        e.sealed_secret
        for e in stored_events(app)
        if isinstance(e, WebhookEndpoints.SecretRotated | WebhookEndpoints.EndpointAdded)
    ]
    assert len(sealed) == 2
    hashes = [hash_secret(s) for s in secrets_]
    for event in stored_events(app):
        published = json.dumps(describe(event))
        assert "secret_hash" not in published and "sealed" not in published
        for value in (*secrets_, *hashes, *sealed):
            assert value not in published
    rotation = [describe(e) for e in stored_events(app) if isinstance(e, WebhookEndpoints.SecretRotated)]
    assert [(kind, set(data)) for kind, _, data in rotation] == [
        ("omni.webhook_endpoint.secret_rotated", {"owner", "id", "previous_valid_until"})
    ]


def test_describe_of_an_unknown_event_is_harmless():
    class Strange:
        pass

    log_type, tenant, payload = describe(Strange())
    assert log_type.startswith("omni.unknown.")
    assert (tenant, payload) == (PLATFORM, {})


# --- what one owner may hold: commands.limits ---------------------------------------------------

SLO_BODY = {"event_type": "inference", "sli": "availability", "status_property": "$.data.status", "objective": 99, "window": "7d"}


def test_an_owners_slos_from_before_the_count_are_read_from_the_views_once(app):
    from commands.errors import LimitReached
    from commands.limits import Limits
    from commands.slos import SloNames, slo_names_aggregate_id
    from schemas.slos import SloBody

    app.limits = Limits(slos_per_owner=3)
    asked: list[str] = []
    app.views_slo_names = lambda owner: asked.append(owner) or ["old-b", "old-a"]
    body = SloBody.model_validate(SLO_BODY)
    tenant = ctx_for("t-1")
    assert app.put_slo(tenant, "new", body)[1] is True
    with pytest.raises(LimitReached) as refused:
        app.put_slo(tenant, "newer", body)
    assert (refused.value.kind, refused.value.limit, refused.value.audited) == ("slo-limit-reached", 3, True)
    assert asked == ["t-1"], "read once: from then on the event store counts"
    names = app.repository.get(slo_names_aggregate_id("t-1"))
    assert isinstance(names, SloNames) and names.names == ["old-a", "old-b", "new"]
    published = [describe(e) for e in stored_events(app) if isinstance(e, SloNames.Event)]
    assert published == [
        ("omni.slo.names_opened", "t-1", {"owner": "t-1", "names": ["old-a", "old-b"]}),
        ("omni.slo.name_added", "t-1", {"owner": "t-1", "name": "new"}),
    ]
    assert (audits(app)[-1].action, audits(app)[-1].outcome) == ("slo.put", "rejected")


def test_a_deleted_slo_keeps_its_place_in_the_count_for_an_hour(app):
    from datetime import datetime, timedelta

    from commands.errors import LimitReached
    from commands.limits import Limits
    from commands.slos import SloNames, slo_names_aggregate_id
    from schemas.envelope import format_time
    from schemas.slos import SloBody

    app.limits = Limits(slos_per_owner=2)
    body = SloBody.model_validate(SLO_BODY)
    tenant = ctx_for("t-1")
    assert app.put_slo(tenant, "a", body)[1] and app.put_slo(tenant, "b", body)[1]
    app.delete_slo(tenant, "a")
    with pytest.raises(LimitReached, match="1 of them deleted within the hour"):
        app.put_slo(tenant, "c", body)
    names = app.repository.get(slo_names_aggregate_id("t-1"))
    assert isinstance(names, SloNames) and names.names == ["b"] and list(names.removed) == ["a"]
    deleted_at = datetime.fromisoformat(names.removed["a"])
    assert names.held(deleted_at + timedelta(minutes=59)) == ["b", "a"]
    assert names.held(deleted_at + timedelta(minutes=61)) == ["b"], "its place is free an hour after"
    # Removals an hour older than the latest are forgotten: the aggregate does not grow with them.
    later = format_time(deleted_at + timedelta(hours=2))
    names.add(owner="t-1", name="x")
    names.remove(owner="t-1", name="x", at=later)
    assert names.removed == {"x": later}


def test_a_tenants_active_keys_from_before_the_count_are_read_from_the_views_once(app):
    from commands.control_plane import KeyRing
    from commands.errors import LimitReached
    from commands.ids import key_ring_aggregate_id
    from commands.limits import Limits

    app.limits = Limits(keys_per_tenant=3)
    created, first = app.create_tenant(ADMIN, "new", "pro")
    ring = app.repository.get(key_ring_aggregate_id(str(created.id)))
    assert isinstance(ring, KeyRing) and ring.key_ids == [first.key_id], "a tenant created now is counted from the start"
    # As an earlier version stored a tenant: its keys, and no count of them.
    old = Tenant(name="old", plan="pro")
    tenant_id = str(old.id)
    keys = [ApiKey(key_id=f"k{i}", tenant_id=tenant_id, secret_hash="x", label=None) for i in range(3)]
    keys[2].revoke(key_id="k2", tenant_id=tenant_id)
    app.save(old, *keys)
    asked: list[str] = []
    app.views_active_keys = lambda t: asked.append(t) or ["k0", "k1"]
    extra = app.issue_key(ctx_for(tenant_id), tenant_id)
    with pytest.raises(LimitReached) as refused:
        app.issue_key(ctx_for(tenant_id), tenant_id)
    assert (refused.value.kind, refused.value.limit, refused.value.audited) == ("key-limit-reached", 3, True)
    assert asked == [tenant_id], "read once: from then on the event store counts"
    app.revoke_key(ctx_for(tenant_id), "k0")
    app.revoke_key(ctx_for(tenant_id), "k2")  # revoked before the count: nothing to take off
    assert app.repository.get(key_ring_aggregate_id(tenant_id)).key_ids == ["k1", extra.key_id]
    app.issue_key(ctx_for(tenant_id), tenant_id)
    assert asked == [tenant_id]


def test_a_key_ring_churned_loads_from_its_snapshot(app):
    """A tenant issuing and revoking keys in a loop grows its key ring's events without end: every
    KEY_RING_SNAPSHOT_EVERY versions a snapshot is taken, and a load replays only what came after."""
    from commands.control_plane import KEY_RING_SNAPSHOT_EVERY
    from commands.ids import key_ring_aggregate_id

    created, first = app.create_tenant(ADMIN, "churn", "pro")
    tenant_id = str(created.id)
    for _ in range(KEY_RING_SNAPSHOT_EVERY):  # two versions each: issued, revoked
        issued = app.issue_key(ctx_for(tenant_id), tenant_id)
        app.revoke_key(ctx_for(tenant_id), issued.key_id)
    last = app.issue_key(ctx_for(tenant_id), tenant_id)
    ring_id = key_ring_aggregate_id(tenant_id)
    snapshots = list(app.snapshots.get(ring_id, desc=True, limit=1))
    assert snapshots and snapshots[0].originator_version == 2 * KEY_RING_SNAPSHOT_EVERY
    ring = app.repository.get(ring_id)
    assert ring.key_ids == [first.key_id, last.key_id] and ring.version == 2 * KEY_RING_SNAPSHOT_EVERY + 2
