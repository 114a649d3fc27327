"""Access control on every route, after OWASP API Security Top 10 2023, API1 to API5.

The routes come from the app's own OpenAPI schema and each must be classified
below, so a route added later cannot escape these checks:

- API2 (broken authentication): no key, a malformed key and an unknown key get 401.
- API5 (broken function level authorization): admin routes refuse tenant keys, and
  tenant routes refuse the admin key, with 403.
- API1 (broken object level authorization): every route that takes an id, called
  with another tenant's id and one's own key, answers 404 and changes nothing.
- API3 (broken object property level authorization): no response carries a key's
  secret after it was issued, and bodies with properties we do not accept
  (tenant_id, role, id) are refused, not silently applied.
- API4 (unrestricted resource consumption): list routes are bounded by `limit`.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH, Omni

PUBLIC, ADMIN_ONLY, TENANT_ONLY, EITHER = "public", "admin", "tenant", "either"
SIGNED = "signed"  # no API key: the sender's signature authenticates it (tests/e2e/test_stripe.py)

ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    # Prometheus scrapes it: counts across tenants, no tenant data; OMNI_METRICS_TOKEN closes it.
    ("GET", "/metrics"): PUBLIC,
    ("HEAD", "/metrics"): PUBLIC,
    ("POST", "/v1/tenants"): ADMIN_ONLY,
    ("POST", "/v1/tenants/{tenant_id}/suspend"): ADMIN_ONLY,
    ("POST", "/v1/tenants/{tenant_id}/resume"): ADMIN_ONLY,
    ("GET", "/v1/tenants"): ADMIN_ONLY,
    ("GET", "/v1/tenants/{tenant_id}"): EITHER,
    ("POST", "/v1/tenants/{tenant_id}/keys"): EITHER,
    ("GET", "/v1/tenants/{tenant_id}/keys"): EITHER,
    ("DELETE", "/v1/keys/{key_id}"): EITHER,
    ("POST", "/v1/meters"): ADMIN_ONLY,
    ("GET", "/v1/meters"): EITHER,
    ("GET", "/v1/meters/{slug}"): EITHER,
    ("PATCH", "/v1/meters/{slug}"): ADMIN_ONLY,
    ("DELETE", "/v1/meters/{slug}"): ADMIN_ONLY,
    ("GET", "/v1/meters/{slug}/query"): TENANT_ONLY,
    ("GET", "/v1/meters/{slug}/watch"): TENANT_ONLY,
    ("POST", "/v1/events"): TENANT_ONLY,
    ("PUT", "/v1/plans/{slug}"): ADMIN_ONLY,
    ("GET", "/v1/plans"): EITHER,
    ("GET", "/v1/plans/{slug}"): EITHER,
    ("PUT", "/v1/tenants/{tenant_id}/plan"): ADMIN_ONLY,
    ("PUT", "/v1/tenants/{tenant_id}/quotas/{meter}"): ADMIN_ONLY,
    ("DELETE", "/v1/tenants/{tenant_id}/quotas/{meter}"): ADMIN_ONLY,
    ("POST", "/v1/quotas/{meter}/consume"): TENANT_ONLY,
    ("GET", "/v1/quotas"): EITHER,
    ("GET", "/v1/quotas/{meter}"): EITHER,
    ("GET", "/v1/notifications"): EITHER,
    ("POST", "/v1/billing/periods/{period}/close"): ADMIN_ONLY,
    ("GET", "/v1/billing/periods"): ADMIN_ONLY,
    ("GET", "/v1/invoices"): EITHER,
    ("GET", "/v1/invoices/upcoming"): EITHER,
    ("GET", "/v1/invoices/{invoice_id}"): EITHER,
    ("POST", "/v1/invoices/{invoice_id}/void"): ADMIN_ONLY,
    ("POST", "/v1/invoices/{invoice_id}/mark-uncollectible"): ADMIN_ONLY,
    ("POST", "/v1/invoices/{invoice_id}/mark-paid"): ADMIN_ONLY,
    ("POST", "/v1/webhooks/stripe"): SIGNED,
    ("GET", "/v1/audit"): EITHER,  # a tenant's own chain; the admin's `_platform`, or `?tenant=`
    ("GET", "/v1/audit/export"): EITHER,
    ("GET", "/v1/audit/proof"): EITHER,
    ("GET", "/v1/audit/consistency"): EITHER,
    ("GET", "/v1/audit/public-key"): EITHER,
    # A tenant's SLO covers its own events, the admin's every tenant's; each sees only its own.
    ("PUT", "/v1/slos/{name}"): EITHER,
    ("DELETE", "/v1/slos/{name}"): EITHER,
    ("GET", "/v1/slos"): EITHER,
    ("GET", "/v1/slos/{name}"): EITHER,
    ("GET", "/v1/slos/{name}/history"): EITHER,
    # Replays rebuild every tenant's views from the log: the operator's alone.
    ("POST", "/v1/admin/replays"): ADMIN_ONLY,
    ("GET", "/v1/admin/replays/{replay_id}"): ADMIN_ONLY,
    # GDPR: the admin declares what is personal; a tenant acts for its own data subjects only.
    ("PUT", "/v1/data-classes/{event_type}"): ADMIN_ONLY,
    ("GET", "/v1/data-classes"): EITHER,
    ("GET", "/v1/data-classes/{event_type}"): EITHER,
    # A tenant's for its own subjects; the admin's for `_platform`'s (its own actor), or `?tenant=`'s.
    ("POST", "/v1/gdpr/requests"): EITHER,
    ("GET", "/v1/gdpr/requests/{request_id}"): EITHER,
    ("GET", "/v1/gdpr/requests/{request_id}/export"): EITHER,
    ("PUT", "/v1/gdpr/retention"): EITHER,  # a tenant's own period; the admin's `_platform`'s, or `?tenant=`'s
    ("GET", "/v1/gdpr/retention"): EITHER,
    # The breach register is the platform's own (Art. 33).
    ("POST", "/v1/gdpr/breaches"): ADMIN_ONLY,
    ("GET", "/v1/gdpr/breaches"): ADMIN_ONLY,
    ("GET", "/v1/gdpr/breaches/{breach_id}"): ADMIN_ONLY,
    ("POST", "/v1/gdpr/breaches/{breach_id}/notified"): ADMIN_ONLY,
    # A tenant's endpoints get its own notices; the admin's, the platform's (each sees only its own).
    ("POST", "/v1/webhook-endpoints"): EITHER,
    ("GET", "/v1/webhook-endpoints"): EITHER,
    ("GET", "/v1/webhook-endpoints/{endpoint_id}"): EITHER,
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): EITHER,
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): EITHER,
    ("GET", "/v1/webhook-endpoints/{endpoint_id}/deliveries"): EITHER,
}


def operations(omni: Omni) -> set[tuple[str, str]]:
    paths = omni.app.openapi()["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item}


def concrete(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: ids[match.group(1)], path)


def request_body(method: str, path: str) -> dict[str, Any]:
    """A body that would be valid, so only the key decides the answer."""
    if (method, path) == ("POST", "/v1/events"):
        return {"content": orjson.dumps([cloud_event("acl-1", type_="call")]), "headers": {"Content-Type": BATCH}}
    if (method, path) == ("POST", "/v1/tenants"):
        return {"json": {"name": "acl", "plan": "pro"}}
    if (method, path) == ("POST", "/v1/meters"):
        return {"json": {"slug": "acl-meter", "event_type": "call", "aggregation": "COUNT"}}
    if (method, path) == ("PATCH", "/v1/meters/{slug}"):
        return {"json": {"description": "calls"}}
    if (method, path) == ("PUT", "/v1/plans/{slug}"):
        return {"json": {"entitlements": [{"meter": "calls", "limit": 5, "period": "DAY"}]}}
    if (method, path) == ("PUT", "/v1/tenants/{tenant_id}/plan"):
        return {"json": {"plan": "calls"}}
    if (method, path) == ("PUT", "/v1/tenants/{tenant_id}/quotas/{meter}"):
        return {"json": {"limit": 5, "period": "DAY"}}
    if (method, path) == ("POST", "/v1/quotas/{meter}/consume"):
        return {"json": {"amount": 1, "idempotency_key": "acl-1"}}
    if (method, path) == ("PUT", "/v1/slos/{name}"):
        return {
            "json": {
                "event_type": "call",
                "sli": "availability",
                "status_property": "$.data.status",
                "objective": 99,
                "window": "7d",
            }
        }
    if (method, path) == ("POST", "/v1/admin/replays"):
        return {"json": {"projections": ["catalog"], "mode": "diff"}}
    if (method, path) == ("PUT", "/v1/data-classes/{event_type}"):
        return {"json": {"personal": ["$.data.email"]}}
    if (method, path) == ("POST", "/v1/gdpr/breaches"):
        return {"json": {"detected_at": "2026-01-01T00:00:00Z", "scope": "acl"}}
    if (method, path) == ("POST", "/v1/gdpr/requests"):
        return {"json": {"subject": "acl-person", "kind": "access"}}
    if (method, path) == ("PUT", "/v1/gdpr/retention"):
        return {"json": {"personal_data_days": 30}}
    if (method, path) == ("POST", "/v1/tenants/{tenant_id}/suspend"):
        return {"json": {"reason": "acl"}}
    if method == "POST" and path.startswith("/v1/invoices/"):
        return {"json": {"reason": "acl"}}
    if method == "POST":
        return {"json": {"label": "acl"}}
    return {}


async def call(omni: Omni, method: str, path: str, ids: dict[str, str], key: str | None) -> Any:
    body = request_body(method, path)
    headers = {**body.pop("headers", {}), **(omni.auth(key) if key is not None else {})}
    return await omni.client.request(method, concrete(path, ids), headers=headers, **body)


async def tenant_with_a_meter(omni: Omni) -> tuple[dict[str, str], str]:
    """A tenant, its key, and the ids every route's path can be filled with."""
    tenant_id, key = await omni.tenant("a")
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    await omni.settle()
    ids = {"tenant_id": tenant_id, "key_id": key.split("_")[1], "slug": "calls", "meter": "calls", "period": "2020-01"}
    return {
        **ids,
        "invoice_id": str(uuid.uuid4()),
        "name": "acl-slo",
        "replay_id": "0123456789ab",
        "event_type": "call",
        "request_id": str(uuid.uuid4()),
        "breach_id": str(uuid.uuid4()),
        "endpoint_id": str(uuid.uuid4()),
    }, key


async def test_every_route_is_classified(omni: Omni) -> None:
    assert operations(omni) == set(ROUTES), "classify every new route in ROUTES"


async def test_every_route_but_health_requires_a_valid_key(omni: Omni) -> None:
    ids, key = await tenant_with_a_meter(omni)
    for (method, path), access in ROUTES.items():
        if access in (PUBLIC, SIGNED):
            continue
        for wrong in (None, "not-a-key", "omni_unknownkeyid_secret", key + "x"):
            response = await call(omni, method, path, ids, wrong)
            assert response.status_code == 401, (method, path, wrong, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers.get("www-authenticate", "").startswith("Bearer")


async def test_admin_routes_refuse_tenant_keys_and_tenant_routes_refuse_the_admin(omni: Omni) -> None:
    ids, key = await tenant_with_a_meter(omni)
    for (method, path), access in ROUTES.items():
        wrong = {ADMIN_ONLY: key, TENANT_ONLY: ADMIN}.get(access)
        if wrong is None:
            continue
        response = await call(omni, method, path, ids, wrong)
        assert response.status_code == 403, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    await omni.settle()
    # Nothing the refused calls asked for happened.
    listed = (await omni.client.get("/v1/tenants", headers=omni.auth(ADMIN))).json()["data"]
    assert [t["name"] for t in listed] == ["a"]
    assert (await omni.client.get("/v1/meters/acl-meter", headers=omni.auth(ADMIN))).status_code == 404
    assert (await omni.client.get("/v1/plans", headers=omni.auth(ADMIN))).json()["data"] == []


async def test_every_route_with_an_id_refuses_another_tenants_id_with_404(omni: Omni) -> None:
    a_id, a_key = await omni.tenant("a")
    b_id, b_key = await omni.tenant("b")
    await omni.settle()
    b_ids = {"tenant_id": b_id, "key_id": b_key.split("_")[1], "slug": "calls", "meter": "calls"}
    # Admin routes refuse a tenant's key whatever the id (403, the test above).
    owned = [(m, p) for (m, p), access in ROUTES.items() if ("{tenant_id}" in p or "{key_id}" in p) and access != ADMIN_ONLY]
    assert owned, "the tenant-owned routes"
    for method, path in owned:
        response = await call(omni, method, path, b_ids, a_key)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    await omni.settle()
    # B's key works and B has no key A issued in its name.
    keys = await omni.client.get(f"/v1/tenants/{b_id}/keys", headers=omni.auth(b_key))
    assert keys.status_code == 200
    assert [k["key_id"] for k in keys.json()["data"]] == [b_key.split("_")[1]]


async def test_a_tenant_key_naming_another_tenant_in_the_query_is_answered_404(omni: Omni) -> None:
    """`?tenant=` is the admin's: a tenant key naming another tenant there reaches nothing of it."""
    ids, a_key = await tenant_with_a_meter(omni)
    b_id, _ = await omni.tenant("b")
    await omni.settle()
    paths = omni.app.openapi()["paths"]
    named = [
        (method.upper(), path)
        for path, item in paths.items()
        for method, operation in item.items()
        if any(p["name"] == "tenant" and p["in"] == "query" for p in operation.get("parameters", []))
    ]
    assert ("POST", "/v1/gdpr/requests") in named and ("GET", "/v1/audit") in named
    for method, path in named:
        body = request_body(method, path)
        headers = {**body.pop("headers", {}), **omni.auth(a_key)}
        url = concrete(path, ids)
        required = {"/v1/audit/proof": {"seq": 1}, "/v1/audit/consistency": {"first": 1}}.get(path, {})
        response = await omni.client.request(method, url, params={"tenant": b_id, **required}, headers=headers, **body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    await omni.settle()
    listed = await omni.client.get(
        "/v1/audit", params={"tenant": b_id, "action": "gdpr.access.received"}, headers=omni.auth(ADMIN)
    )
    assert listed.status_code == 200 and listed.json()["data"] == [], listed.text  # no request was made for B


async def test_bodies_cannot_assign_what_the_key_decides(omni: Omni) -> None:
    a_id, a_key = await omni.tenant("a")
    b_id, _ = await omni.tenant("b")
    for method, path, body in [
        ("POST", "/v1/tenants", {"name": "x", "plan": "p", "role": "admin"}),
        ("POST", "/v1/tenants", {"name": "x", "plan": "p", "id": a_id}),
        ("POST", f"/v1/tenants/{a_id}/keys", {"label": "x", "tenant_id": b_id}),
        ("POST", f"/v1/tenants/{a_id}/keys", {"label": "x", "role": "admin"}),
        ("POST", "/v1/meters", {"slug": "m", "event_type": "t", "aggregation": "COUNT", "tenant_id": a_id}),
        (
            "PUT",
            "/v1/slos/s",
            {
                "event_type": "t",
                "sli": "availability",
                "status_property": "$.data.s",
                "objective": 99,
                "window": "7d",
                "owner": b_id,
            },
        ),
    ]:
        key = ADMIN if path in ("/v1/tenants", "/v1/meters") else a_key
        response = await omni.client.request(method, path, json=body, headers=omni.auth(key))
        assert response.status_code == 422, (method, path, body, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_secrets_are_shown_once_and_lists_are_bounded(omni: Omni) -> None:
    tenant_id, key = await omni.tenant("a")
    secret = key.split("_", 2)[2]
    await omni.settle()
    for path in (f"/v1/tenants/{tenant_id}", f"/v1/tenants/{tenant_id}/keys"):
        text = (await omni.client.get(path, headers=omni.auth(key))).text
        assert secret not in text and "api_key" not in text, path
    listed = await omni.client.get("/v1/tenants", params={"limit": 100_000}, headers=omni.auth(ADMIN))
    assert listed.status_code == 422
    assert listed.headers["content-type"] == "application/problem+json"
