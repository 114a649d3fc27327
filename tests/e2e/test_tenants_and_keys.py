"""Tenants and keys over HTTP: keys shown once, revocation at once, tenants kept apart."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from tests.e2e.conftest import ADMIN, Omni


async def test_a_tenant_gets_a_working_key(omni: Omni) -> None:
    before = datetime.now(UTC)
    tenant_id, key = await omni.tenant("acme", "pro")
    after = datetime.now(UTC)
    await omni.settle()
    response = await omni.client.get(f"/v1/tenants/{tenant_id}", headers=omni.auth(key))
    assert response.status_code == 200
    # created_at is when the event store recorded the tenant, to the microsecond, in UTC.
    created_on = omni.platform.control.repository.get(UUID(tenant_id)).created_on
    assert before <= created_on <= after
    created_at = created_on.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert response.json() == {
        "id": tenant_id,
        "name": "acme",
        "plan": "pro",
        "created_at": created_at,
        "status": "active",
        "suspended_at": None,
        "suspension_reason": None,
    }


async def test_a_revoked_key_is_refused_at_once(omni: Omni) -> None:
    tenant_id, first = await omni.tenant()
    issued = await omni.client.post(f"/v1/tenants/{tenant_id}/keys", json={"label": "ci"}, headers=omni.auth(first))
    assert issued.status_code == 201
    second, second_id = issued.json()["api_key"], issued.json()["key_id"]
    first_id = first.split("_")[1]

    revoked = await omni.client.delete(f"/v1/keys/{first_id}", headers=omni.auth(second))
    assert revoked.status_code == 204
    # No settling: the revocation reaches this process's key cache before the 204 answers it.
    refused = await omni.client.get(f"/v1/tenants/{tenant_id}/keys", headers=omni.auth(first))
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert (await omni.client.get(f"/v1/tenants/{tenant_id}/keys", headers=omni.auth(second))).status_code == 200
    # Revoking again is harmless.
    assert (await omni.client.delete(f"/v1/keys/{first_id}", headers=omni.auth(second))).status_code == 204

    await omni.settle()
    keys = (await omni.client.get(f"/v1/tenants/{tenant_id}/keys", headers=omni.auth(second))).json()["data"]
    states = {k["key_id"]: k["revoked_at"] is not None for k in keys}
    assert states == {first_id: True, second_id: False}
    assert all("api_key" not in k and "secret" not in str(k) for k in keys)


async def test_another_tenants_resources_answer_404(omni: Omni) -> None:
    a_id, a_key = await omni.tenant("a")
    b_id, b_key = await omni.tenant("b")
    await omni.settle()
    b_key_id = b_key.split("_")[1]
    for method, path in [
        ("GET", f"/v1/tenants/{b_id}"),
        ("GET", f"/v1/tenants/{b_id}/keys"),
        ("POST", f"/v1/tenants/{b_id}/keys"),
        ("DELETE", f"/v1/keys/{b_key_id}"),
    ]:
        response = await omni.client.request(method, path, headers=omni.auth(a_key))
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    # B's key still works: A's attempt to revoke it changed nothing.
    assert (await omni.client.get(f"/v1/tenants/{b_id}", headers=omni.auth(b_key))).status_code == 200


async def test_the_tenant_comes_from_the_key_never_the_body(omni: Omni) -> None:
    _, a_key = await omni.tenant("a")
    b_id, b_key = await omni.tenant("b")
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    sneaky = {"specversion": "1.0", "id": "1", "source": "s", "type": "call", "subject": "u", "tenant_id": b_id}
    response = await omni.send(a_key, [sneaky])
    # `tenant_id` is not a CloudEvents extension name (underscore): the whole event is refused.
    assert response.status_code == 422
    sneaky = {k: v for k, v in sneaky.items() if k != "tenant_id"} | {"tenantid": b_id}
    # `tenantid` is Omni's own extension attribute on the log (README, Topics): refused too.
    refused = await omni.send(a_key, [sneaky])
    assert refused.status_code == 422 and "'tenantid' is reserved" in refused.text
    sneaky = {k: v for k, v in sneaky.items() if k != "tenantid"} | {"tenant": b_id}  # any other name is the client's own
    assert (await omni.send(a_key, [sneaky])).status_code == 202
    await omni.settle()
    assert await omni.query(b_key, "calls") == []
    assert [row["value"] for row in await omni.query(a_key, "calls")] == [1]


async def test_keys_and_roles_are_enforced(omni: Omni) -> None:
    tenant_id, key = await omni.tenant()
    no_key = await omni.client.post("/v1/tenants", json={"name": "x", "plan": "y"})
    assert no_key.status_code == 401
    bad_key = await omni.client.post("/v1/tenants", json={"name": "x", "plan": "y"}, headers=omni.auth("omni_abc_def"))
    assert bad_key.status_code == 401
    tenant_on_admin = await omni.client.post("/v1/tenants", json={"name": "x", "plan": "y"}, headers=omni.auth(key))
    assert tenant_on_admin.status_code == 403
    meter_by_tenant = await omni.client.post(
        "/v1/meters", json={"slug": "m", "event_type": "t", "aggregation": "COUNT"}, headers=omni.auth(key)
    )
    assert meter_by_tenant.status_code == 403
    admin_ingest = await omni.send(ADMIN, [{"specversion": "1.0", "id": "1", "source": "s", "type": "t", "subject": "u"}])
    assert admin_ingest.status_code == 403
    mass_assignment = await omni.client.post(
        "/v1/tenants", json={"name": "x", "plan": "y", "role": "admin"}, headers=omni.auth(ADMIN)
    )
    assert mass_assignment.status_code == 422


async def test_every_command_is_audited_accepted_or_refused(omni: Omni) -> None:
    from schemas.envelope import decode

    tenant_id, key = await omni.tenant("audited")
    await omni.client.post("/v1/tenants", json={"name": "x", "plan": "y"}, headers=omni.auth(key))  # wrong role
    await omni.client.post("/v1/tenants", json={"name": ""}, headers=omni.auth(ADMIN))  # invalid body
    await omni.client.delete("/v1/keys/nope", headers={**omni.auth(key), "User-Agent": "auditor/1"})  # unknown key
    await omni.settle()
    topic = omni.platform.topics.audit
    entries = [
        decode(r.value)
        for p in range(omni.platform.topics.partitions(topic))
        for r in await omni.platform.log.read(topic, p, 0, 1000)
    ]
    seen = {(e.data["action"], e.data["outcome"], e.tenant_id) for e in entries}
    assert ("tenant.create", "accepted", tenant_id) in seen
    assert ("tenant.create", "rejected", tenant_id) in seen  # the tenant key tried an admin command
    assert ("tenant.create", "rejected", "_platform") in seen  # the admin sent an invalid body
    revoke = next(e for e in entries if e.data["action"] == "api_key.revoke")
    assert revoke.data["outcome"] == "rejected"
    assert revoke.data["actor"]["user_agent"]["ps"].startswith("ps2_")  # sealed on the topic
    raw = [
        r.value for p in range(omni.platform.topics.partitions(topic)) for r in await omni.platform.log.read(topic, p, 0, 1000)
    ]
    assert not [value for value in raw if b"auditor/1" in value]
    opened = omni.platform.personal.open_actors(tenant_id, [revoke.data["actor"]])
    assert opened == [{"ip": "127.0.0.1", "user_agent": "auditor/1"}]  # and opens for its tenant
    assert revoke.data["actor"]["key_id"] == key.split("_")[1]
    assert revoke.data["trace_id"]
