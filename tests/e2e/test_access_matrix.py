"""The access control contract, cell by cell: every operation of the app's OpenAPI document, called
by every kind of caller, answers what README's route table ("who") says.

Callers: no key, a malformed key, an unknown key (a real key id, a wrong secret), a revoked key,
tenant A's key (the owner), tenant B's key reaching for A's resources (A's ids in the path, and
`?tenant=A` where the operation takes it), and the admin's key (with `?tenant=A` where taken).

- no, malformed, unknown or revoked key: 401 under /v1/ (the webhook is authenticated by its
  signature, and answers 404 while no signing secret is set);
- a tenant key on an admin route: 403; the admin key on a tenant-only route: 403;
- another tenant's resource: 404, never 403, so its existence does not leak;
- the owner and the admin: what the route answers on success.

Every error is problem+json, no answer is a 500, every answer under /v1/ is `Cache-Control:
no-store`, and every refused command of an authenticated caller leaves an audit entry.
One platform per mode: the world is built once and every cell runs against it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from api.audit import COMMAND_ROUTES
from projections.invoices import BillingPeriod
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH, Omni

Operation = tuple[str, str]  # (method, OpenAPI path template)

NONE, MALFORMED, UNKNOWN, REVOKED, OWNER, OTHER, ADMIN_CALLER = (
    "no-key",
    "malformed-key",
    "unknown-key",
    "revoked-key",
    "tenant-a",
    "tenant-b",
    "admin",
)
CALLERS = (NONE, MALFORMED, UNKNOWN, REVOKED, OWNER, OTHER, ADMIN_CALLER)
UNAUTHENTICATED = (NONE, MALFORMED, UNKNOWN, REVOKED)

# Routes outside the API key: open to anyone (README, Security), whatever key is sent or not.
OPEN: dict[Operation, int] = {
    ("GET", "/healthz"): 200,
    ("GET", "/readyz"): 200,
    ("GET", "/metrics"): 200,
    ("HEAD", "/metrics"): 200,
    # Stripe's signature is its authentication; without OMNI_STRIPE_WEBHOOK_SECRET it answers 404.
    ("POST", "/v1/webhooks/stripe"): 404,
}

# (tenant A on its own resources, tenant B on A's, the admin on A's) as README's table says.
EXPECTED: dict[Operation, tuple[int, int, int]] = {
    ("POST", "/v1/tenants"): (403, 403, 201),  # admin
    ("GET", "/v1/tenants"): (403, 403, 200),  # admin: a tenant lists no one
    ("GET", "/v1/tenants/{tenant_id}"): (200, 404, 200),  # admin; a tenant sees itself
    ("POST", "/v1/tenants/{tenant_id}/keys"): (201, 404, 201),  # admin or the tenant
    ("GET", "/v1/tenants/{tenant_id}/keys"): (200, 404, 200),
    ("DELETE", "/v1/keys/{key_id}"): (204, 404, 204),  # admin or the key's tenant
    ("POST", "/v1/events"): (202, 202, 403),  # tenant (B sends its own events)
    ("POST", "/v1/meters"): (403, 403, 201),  # admin defines; anyone with a key reads
    ("GET", "/v1/meters"): (200, 200, 200),
    ("GET", "/v1/meters/{slug}"): (200, 200, 200),
    ("PATCH", "/v1/meters/{slug}"): (403, 403, 200),  # admin
    ("DELETE", "/v1/meters/{slug}"): (403, 403, 204),  # admin (a meter of its own: `calls` is in use)
    ("GET", "/v1/meters/{slug}/query"): (200, 200, 403),  # tenant (B queries its own usage)
    ("GET", "/v1/meters/{slug}/watch"): (200, 200, 403),  # tenant (B watches its own usage)
    ("PUT", "/v1/plans/{slug}"): (403, 403, 201),  # admin puts; anyone with a key reads
    ("GET", "/v1/plans"): (200, 200, 200),
    ("GET", "/v1/plans/{slug}"): (200, 200, 200),
    ("PUT", "/v1/tenants/{tenant_id}/plan"): (403, 403, 204),  # admin
    ("POST", "/v1/tenants/{tenant_id}/suspend"): (403, 403, 200),  # admin
    ("POST", "/v1/tenants/{tenant_id}/resume"): (403, 403, 200),  # admin
    ("PUT", "/v1/tenants/{tenant_id}/quotas/{meter}"): (403, 403, 204),  # admin
    ("DELETE", "/v1/tenants/{tenant_id}/quotas/{meter}"): (403, 403, 204),
    ("POST", "/v1/quotas/{meter}/consume"): (200, 200, 403),  # tenant (B consumes its own quota)
    ("GET", "/v1/quotas"): (200, 404, 200),  # tenant; admin with ?tenant=
    ("GET", "/v1/quotas/{meter}"): (200, 404, 200),
    ("GET", "/v1/notifications"): (200, 404, 200),  # tenant; admin with ?tenant=
    ("POST", "/v1/billing/periods/{period}/close"): (403, 403, 200),  # admin
    ("GET", "/v1/billing/periods"): (403, 403, 200),  # admin
    ("GET", "/v1/invoices"): (200, 404, 200),  # tenant; admin (every tenant's, or ?tenant=)
    ("GET", "/v1/invoices/upcoming"): (200, 404, 200),  # tenant; admin with ?tenant=
    ("GET", "/v1/invoices/{invoice_id}"): (200, 404, 200),
    ("POST", "/v1/invoices/{invoice_id}/void"): (403, 403, 200),  # admin
    ("POST", "/v1/invoices/{invoice_id}/mark-uncollectible"): (403, 403, 200),
    ("POST", "/v1/invoices/{invoice_id}/mark-paid"): (403, 403, 200),
    ("GET", "/v1/audit"): (200, 404, 200),  # tenant (its own chain); admin (`_platform`, or ?tenant=)
    ("GET", "/v1/audit/export"): (200, 404, 200),
    ("GET", "/v1/audit/proof"): (200, 404, 200),
    ("GET", "/v1/audit/consistency"): (200, 404, 200),
    ("GET", "/v1/audit/public-key"): (200, 200, 200),  # anyone with a key
    # A tenant's SLOs and the admin's (`_platform`'s) are apart: each names its own, reads its own.
    ("PUT", "/v1/slos/{name}"): (200, 201, 201),  # A's unchanged; B and the admin define their own
    ("DELETE", "/v1/slos/{name}"): (204, 404, 404),  # its owner (A deletes one of its own, the other stays)
    ("GET", "/v1/slos"): (200, 200, 200),
    ("GET", "/v1/slos/{name}"): (200, 404, 404),  # its owner
    ("GET", "/v1/slos/{name}/history"): (200, 404, 404),
    ("POST", "/v1/admin/replays"): (403, 403, 202),  # admin
    ("GET", "/v1/admin/replays/{replay_id}"): (403, 403, 200),
    ("PUT", "/v1/data-classes/{event_type}"): (403, 403, 200),  # admin puts (unchanged); anyone reads
    ("GET", "/v1/data-classes"): (200, 200, 200),
    ("GET", "/v1/data-classes/{event_type}"): (200, 200, 200),
    ("POST", "/v1/gdpr/requests"): (202, 404, 202),  # tenant; admin (`_platform`, or ?tenant=)
    ("GET", "/v1/gdpr/requests/{request_id}"): (200, 404, 200),  # the tenant it is about; admin (?tenant=)
    ("GET", "/v1/gdpr/requests/{request_id}/export"): (200, 404, 200),
    ("PUT", "/v1/gdpr/retention"): (200, 404, 200),  # tenant; admin (`_platform`'s, or ?tenant=)
    ("GET", "/v1/gdpr/retention"): (200, 404, 200),
    ("POST", "/v1/gdpr/breaches"): (403, 403, 201),  # admin
    ("GET", "/v1/gdpr/breaches"): (403, 403, 200),
    ("GET", "/v1/gdpr/breaches/{breach_id}"): (403, 403, 200),
    ("POST", "/v1/gdpr/breaches/{breach_id}/notified"): (403, 403, 200),
    # A tenant's webhook endpoints and the admin's (the platform's) are apart, as SLOs are.
    ("POST", "/v1/webhook-endpoints"): (201, 201, 201),  # each adds its own
    ("GET", "/v1/webhook-endpoints"): (200, 200, 200),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}"): (200, 404, 404),  # its owner
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): (204, 404, 404),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): (200, 404, 404),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}/deliveries"): (200, 404, 404),
}

WEBHOOK_URL = "https://93.184.215.14/acl"  # a public address: nothing resolved, and no notice of theirs is sent here
SLO = {"event_type": "call", "sli": "availability", "status_property": "$.data.status", "objective": 99, "window": "7d"}
PLAN = {"currency": "USD", "fee": "1.00", "entitlements": [{"meter": "calls", "limit": 1000, "period": "DAY"}]}
BODIES: dict[Operation, dict[str, Any]] = {
    ("POST", "/v1/tenants"): {"name": "acl", "plan": "pro"},
    ("POST", "/v1/tenants/{tenant_id}/keys"): {"label": "acl"},
    ("POST", "/v1/meters"): {"slug": "acl-meter", "event_type": "call", "aggregation": "COUNT"},
    ("PATCH", "/v1/meters/{slug}"): {"description": "calls, as the access matrix makes them"},
    ("PUT", "/v1/plans/{slug}"): PLAN,
    ("PUT", "/v1/tenants/{tenant_id}/plan"): {"plan": "pro"},
    ("POST", "/v1/tenants/{tenant_id}/suspend"): {"reason": "acl"},
    ("PUT", "/v1/tenants/{tenant_id}/quotas/{meter}"): {"limit": 5, "period": "DAY"},
    ("PUT", "/v1/slos/{name}"): SLO,
    ("POST", "/v1/admin/replays"): {"projections": ["catalog"], "mode": "diff"},
    ("PUT", "/v1/data-classes/{event_type}"): {"personal": ["$.data.email"]},
    ("POST", "/v1/gdpr/requests"): {"subject": "acl-person", "kind": "access"},
    ("PUT", "/v1/gdpr/retention"): {"personal_data_days": 30},
    ("POST", "/v1/gdpr/breaches"): {"detected_at": "2026-01-01T00:00:00Z", "scope": "acl"},
    ("POST", "/v1/invoices/{invoice_id}/void"): {"reason": "acl"},
    ("POST", "/v1/invoices/{invoice_id}/mark-uncollectible"): {"reason": "acl"},
    ("POST", "/v1/invoices/{invoice_id}/mark-paid"): {"reason": "acl"},
    ("POST", "/v1/webhook-endpoints"): {"url": WEBHOOK_URL},
}
QUERIES: dict[str, dict[str, str]] = {
    "/v1/audit/proof": {"seq": "1"},
    "/v1/audit/consistency": {"first": "1"},
    "/v1/slos/{name}/history": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"},
}


@dataclass
class World:
    """Tenant A's resources (what every path is filled with), the keys of each caller, and for the
    cells that use a resource up (a revocation, an invoice's move) one of its own per caller."""

    a_id: str
    keys: dict[str, str | None]
    ids: dict[str, str]
    own: dict[tuple[Operation, str], dict[str, str]] = field(default_factory=dict)


def operations(omni: Omni) -> list[tuple[Operation, bool]]:
    """Each operation of the OpenAPI document, and whether it takes `?tenant=`."""
    found = []
    for path, item in omni.app.openapi()["paths"].items():
        for method, operation in item.items():
            named = any(p["name"] == "tenant" and p["in"] == "query" for p in operation.get("parameters", []))
            found.append(((method.upper(), path), named))
    return sorted(found)


async def ok(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    return response.json() if response.content else {}  # type: ignore[no-any-return]


async def with_views_settled(omni: Omni, request: Any) -> httpx.Response:
    """A request that waits for the views to fold (a billing close), with the runner turning meanwhile."""
    task = asyncio.ensure_future(request)
    while not task.done():
        await omni.settle()
        await asyncio.sleep(0.01)
    await omni.settle()
    return task.result()


async def build_world(omni: Omni) -> World:
    admin = omni.auth(ADMIN)
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    await omni.meter(slug="acl-doomed", event_type="call", aggregation="COUNT")  # the one the admin deletes
    await ok(await omni.client.put("/v1/plans/pro", json=PLAN, headers=admin), 201)
    await ok(await omni.client.put("/v1/data-classes/call", json={"personal": ["$.data.email"]}, headers=admin), 201)
    a_id, a_key = await omni.tenant("a")
    b_id, b_key = await omni.tenant("b")
    moved = {name: await omni.tenant(name) for name in ("void", "uncollectible", "paid")}  # invoices the admin moves
    held_id, _ = await omni.tenant("held")  # the one the admin suspends and resumes (A's consumes go on)
    a = omni.auth(a_key)
    for tenant_id in [a_id, b_id, *(t for t, _ in moved.values())]:
        await ok(await omni.client.put(f"/v1/tenants/{tenant_id}/plan", json={"plan": "pro"}, headers=admin), 204)

    async def new_key(tenant_id: str, key: str) -> dict[str, Any]:
        path = f"/v1/tenants/{tenant_id}/keys"
        return await ok(await omni.client.post(path, json={"label": "x"}, headers=omni.auth(key)), 201)

    override = {"limit": 5, "period": "DAY"}  # so that the admin's DELETE has one to remove (none: 404)
    await ok(await omni.client.put(f"/v1/tenants/{a_id}/quotas/calls", json=override, headers=admin), 204)
    revoked = (await new_key(a_id, a_key))["api_key"]
    await ok(await omni.client.delete(f"/v1/keys/{revoked.split('_')[1]}", headers=a), 204)
    spare = {caller: (await new_key(a_id, a_key))["key_id"] for caller in (OWNER, OTHER, ADMIN_CALLER)}
    await ok(await omni.send(a_key, [cloud_event("acl-a", type_="call", data={"status": 200})]), 202)
    await ok(await omni.client.put("/v1/slos/acl-slo", json=SLO, headers=a), 201)
    await ok(await omni.client.put("/v1/slos/acl-slo-deleted", json=SLO, headers=a), 201)
    await ok(await omni.client.put("/v1/gdpr/retention", json={"personal_data_days": 30}, headers=a), 201)
    hooks = [
        await ok(await omni.client.post("/v1/webhook-endpoints", json={"url": WEBHOOK_URL}, headers=a), 201) for _ in range(2)
    ]
    await omni.settle()

    # A month closed, so every tenant has a finalized invoice (its plan's fee), then the clock back.
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: this_month.end + timedelta(hours=1)
    closing = omni.client.post(f"/v1/billing/periods/{this_month.text}/close", headers=admin)
    await ok(await with_views_settled(omni, closing), 200)
    omni.platform.clock = lambda: datetime.now(UTC)
    invoices = (await ok(await omni.client.get("/v1/invoices", headers=admin), 200))["data"]
    invoice_of = {i["tenant_id"]: i["id"] for i in invoices}

    requested = await omni.client.post("/v1/gdpr/requests", json={"subject": "acl-a", "kind": "access"}, headers=a)
    request_id = (await ok(requested, 202))["id"]
    await asyncio.wait_for(omni.platform.gdpr_jobs.wait(), timeout=20)
    breach = await omni.client.post("/v1/gdpr/breaches", json=BODIES[("POST", "/v1/gdpr/breaches")], headers=admin)
    replay = await omni.client.post("/v1/admin/replays", json={"projections": ["catalog"]}, headers=admin)
    replay_id = (await ok(replay, 202))["id"]
    deadline = time.monotonic() + 20
    while (await omni.client.get(f"/v1/admin/replays/{replay_id}", headers=admin)).json()["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # the job runs on this event loop
    await omni.settle()

    world = World(
        a_id=a_id,
        keys={
            NONE: None,
            MALFORMED: "not-a-key",
            UNKNOWN: a_key[: a_key.rindex("_") + 1] + "x" * len(a_key.split("_", 2)[2]),
            REVOKED: revoked,
            OWNER: a_key,
            OTHER: b_key,
            ADMIN_CALLER: ADMIN,
        },
        ids={
            "tenant_id": a_id,
            "key_id": spare[OWNER],
            "slug": "calls",
            "meter": "calls",
            "period": "2020-01",
            "invoice_id": invoice_of[a_id],
            "name": "acl-slo",
            "replay_id": replay_id,
            "event_type": "call",
            "request_id": request_id,
            "breach_id": (await ok(breach, 201))["id"],
            "endpoint_id": hooks[0]["id"],
        },
    )
    for caller in (OTHER, ADMIN_CALLER):
        world.own[(("DELETE", "/v1/keys/{key_id}"), caller)] = {"key_id": spare[caller]}
    world.own[(("DELETE", "/v1/webhook-endpoints/{endpoint_id}"), OWNER)] = {"endpoint_id": hooks[1]["id"]}  # the other stays
    world.own[(("DELETE", "/v1/slos/{name}"), OWNER)] = {"name": "acl-slo-deleted"}
    world.own[(("DELETE", "/v1/meters/{slug}"), ADMIN_CALLER)] = {"slug": "acl-doomed"}
    for name, (tenant_id, _) in moved.items():
        operation = ("POST", f"/v1/invoices/{{invoice_id}}/{'mark-' if name != 'void' else ''}{name}")
        world.own[(operation, ADMIN_CALLER)] = {"invoice_id": invoice_of[tenant_id]}
    for action in ("suspend", "resume"):
        world.own[(("POST", f"/v1/tenants/{{tenant_id}}/{action}"), ADMIN_CALLER)] = {"tenant_id": held_id}
    # PUT /v1/plans/{slug} by the admin publishes a plan of its own, as every other caller names.
    world.own[(("PUT", "/v1/plans/{slug}"), ADMIN_CALLER)] = {"slug": "acl-plan"}
    return world


def expected(operation: Operation, caller: str) -> int:
    if operation in OPEN:
        return OPEN[operation]
    if caller in UNAUTHENTICATED:
        return 401
    owner, other, admin = EXPECTED[operation]
    return {OWNER: owner, OTHER: other, ADMIN_CALLER: admin}[caller]


def url_of(world: World, operation: Operation, caller: str) -> str:
    """The operation's path with the world's ids (the caller's own, where it has some) in it."""
    template = operation[1]
    ids = world.ids | ({"slug": "pro"} if "/plans/" in template else {}) | world.own.get((operation, caller), {})
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda match: ids[match.group(1)], template)


async def call(omni: Omni, world: World, operation: Operation, named: bool, caller: str) -> httpx.Response:
    method, template = operation
    url = url_of(world, operation, caller)
    params = dict(QUERIES.get(template, {}))
    if named and caller in (OTHER, ADMIN_CALLER):
        params["tenant"] = world.a_id  # B reaching for A's; the admin naming A
    key = world.keys[caller]
    headers = omni.auth(key) if key is not None else {}
    if operation == ("POST", "/v1/events"):
        body = orjson.dumps([cloud_event(f"acl-{caller}", type_="call", data={"status": 200})])
        return await omni.client.post(url, content=body, headers={**headers, "Content-Type": BATCH})
    if operation == ("POST", "/v1/quotas/{meter}/consume"):
        body = {"amount": 1, "idempotency_key": f"acl-{caller}", "subject": "acl-person"}
        return await omni.client.post(url, json=body, headers=headers)
    body = BODIES.get(operation)
    request = omni.client.request(method, url, params=params, headers=headers, json=body)
    if operation == ("POST", "/v1/billing/periods/{period}/close") and caller == ADMIN_CALLER:
        return await with_views_settled(omni, request)
    return await request


async def call_with_bad_input(omni: Omni, world: World, operation: Operation, caller: str) -> httpx.Response:
    """The call again with every query parameter the operation declares, its body and (on a POST) its
    Idempotency-Key malformed: a caller the route refuses is refused before anything it sent is read."""
    method, template = operation
    url = url_of(world, operation, caller)
    declared = omni.app.openapi()["paths"][template][method.lower()].get("parameters", [])
    params = {p["name"]: "\x00not-a-value" for p in declared if p["in"] == "query"}
    key = world.keys[caller]
    headers = {**(omni.auth(key) if key is not None else {}), "Content-Type": "application/json"}
    if method == "POST":  # a key api/idempotency.py refuses (422), were it to read the request first
        headers["Idempotency-Key"] = "not a key"
    return await omni.client.request(method, url, params=params, headers=headers, content=b'{"malformed": ')


def defects(operation: Operation, caller: str, response: httpx.Response) -> list[str]:
    found = []
    want = expected(operation, caller)
    if response.status_code != want:
        found.append(f"status {response.status_code}, README says {want}: {response.text[:200]}")
    if response.status_code >= 400 and response.headers.get("content-type") != "application/problem+json":
        found.append(f"error as {response.headers.get('content-type')}, not application/problem+json")
    if operation[1].startswith("/v1/") and response.headers.get("cache-control") != "no-store":
        found.append(f"Cache-Control {response.headers.get('cache-control')!r}, not no-store")
    return found


async def rejected_audit(omni: Omni, key: str) -> Counter[str]:
    """The refused commands in the chain of `key`'s caller (the admin's: `_platform`), by action."""
    params = {"outcome": "rejected", "limit": "500"}
    entries = (await ok(await omni.client.get("/v1/audit", params=params, headers=omni.auth(key)), 200))["data"]
    return Counter(e["action"] for e in entries)


async def test_every_operation_answers_every_caller_as_the_readme_says(omni: Omni) -> None:
    world = await build_world(omni)
    ops = operations(omni)
    assert {op for op, _ in ops} == set(OPEN) | set(EXPECTED), "a new route: add its row to README and EXPECTED"
    audited = {(m, re.sub(r":\w+\}", "}", p)): how.action for (m, p), how in COMMAND_ROUTES.items()}
    refused: dict[str, Counter[str]] = {OWNER: Counter(), OTHER: Counter(), ADMIN_CALLER: Counter()}
    before = {caller: await rejected_audit(omni, world.keys[caller] or "") for caller in refused}
    found: list[str] = []
    for operation, named in ops:
        for caller in CALLERS:
            responses = {"": await call(omni, world, operation, named, caller)}
            if expected(operation, caller) in (401, 403):  # refused before anything it sent is read
                responses[", bad input"] = await call_with_bad_input(omni, world, operation, caller)
            for variant, response in responses.items():
                found += [
                    f"{operation[0]} {operation[1]} by {caller}{variant}: {d}" for d in defects(operation, caller, response)
                ]
                if caller in refused and operation in audited and 400 <= response.status_code < 500:
                    refused[caller][audited[operation]] += 1
    await omni.settle()
    for caller, counted in refused.items():
        recorded = await rejected_audit(omni, world.keys[caller] or "")
        for action, count in counted.items():
            if recorded[action] - before[caller][action] < count:
                found.append(f"{caller}: {count} refused {action}, {recorded[action] - before[caller][action]} audited")
    assert not found, "\n".join(found)


async def test_a_key_lifecycle_reaches_no_one_elses_keys(omni: Omni) -> None:
    """A revoked key is refused from the very next request on every kind of route (no settling), a
    tenant can revoke neither another tenant's key nor the admin's, and lists no tenants."""
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    await ok(await omni.client.put("/v1/plans/pro", json=PLAN, headers=omni.auth(ADMIN)), 201)
    a_id, a_key = await omni.tenant("a")
    b_id, b_key = await omni.tenant("b")
    await omni.settle()
    a, b = omni.auth(a_key), omni.auth(b_key)
    consume = {"amount": 1, "idempotency_key": "k"}
    event = orjson.dumps([cloud_event("e", type_="call")])
    assert (await omni.client.post("/v1/quotas/calls/consume", json=consume, headers=a)).status_code == 200

    for key_id in (b_key.split("_")[1], "admin"):
        refused = await omni.client.delete(f"/v1/keys/{key_id}", headers=a)
        assert refused.status_code == 404 and refused.headers["content-type"] == "application/problem+json", key_id
    assert (await omni.client.delete("/v1/keys/admin", headers=omni.auth(ADMIN))).status_code == 404
    assert (await omni.client.get(f"/v1/tenants/{b_id}", headers=b)).status_code == 200
    assert (await omni.client.get("/v1/tenants", headers=omni.auth(ADMIN))).status_code == 200
    assert (await omni.client.get("/v1/tenants", headers=a)).status_code == 403
    assert (await omni.client.get(f"/v1/tenants/{b_id}", headers=a)).status_code == 404

    assert (await omni.client.delete(f"/v1/keys/{a_key.split('_')[1]}", headers=a)).status_code == 204
    for method, path, kwargs in [
        ("GET", f"/v1/tenants/{a_id}", {}),
        ("POST", "/v1/events", {"content": event, "headers": {"Content-Type": BATCH}}),
        ("POST", "/v1/quotas/calls/consume", {"json": consume | {"idempotency_key": "after"}}),
        ("POST", f"/v1/tenants/{a_id}/keys", {"json": {"label": "again"}}),
    ]:
        headers = {**kwargs.pop("headers", {}), **a}
        response = await omni.client.request(method, path, headers=headers, **kwargs)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    await omni.settle()
    keys = (await ok(await omni.client.get(f"/v1/tenants/{a_id}/keys", headers=omni.auth(ADMIN)), 200))["data"]
    assert [k["revoked_at"] is not None for k in keys] == [True], "the revoked key issued nothing"
