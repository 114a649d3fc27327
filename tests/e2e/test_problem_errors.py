"""Problem+json `errors` have one shape, whoever refuses: each item a `location` (dotted: where in
the request, `body.entitlements.0.limit`, `path.meter`, `query.from`) and a `reason`, both for the
request's validation and the commands' own rules."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_plans_and_quotas import CALLS, LATEST, TOKENS


def errors_of(response: httpx.Response, kind: str) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/" + kind), body
    assert all(set(error) == {"location", "reason"} for error in body["errors"]), body["errors"]
    first = body["errors"][0]  # the detail tells it too, as every other problem's does (it had none)
    assert body.get("detail") and (first["location"] in body["detail"] or first["reason"] in body["detail"]), body
    return body["errors"]  # type: ignore[no-any-return]


async def test_errors_name_a_location_and_a_reason_everywhere(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await omni.meter(**LATEST)
    tenant_id, _ = await omni.tenant()
    admin = omni.auth(ADMIN)
    put = omni.client.put
    # The request's validation.
    limit = {"entitlements": [{"meter": "tokens", "limit": -1, "period": "DAY"}]}
    [error] = errors_of(await put("/v1/plans/p", json=limit, headers=admin), "invalid-body")
    assert error["location"] == "body.entitlements.0.limit"
    # The plan's rules: meters that do not exist or are not additive, where the body names them.
    meters = {
        "entitlements": [
            {"meter": "tokens", "limit": 5, "period": "DAY"},
            {"meter": "nope", "limit": 5, "period": "DAY"},
            {"meter": "speed", "limit": 5, "period": "DAY"},
        ]
    }
    found = errors_of(await put("/v1/plans/p", json=meters, headers=admin), "invalid-quota")
    assert [e["location"] for e in found] == ["body.entitlements.1.meter", "body.entitlements.2.meter"]
    assert "'nope' is not defined" in found[0]["reason"] and "MAX" in found[1]["reason"]
    [error] = errors_of(await put(f"/v1/tenants/{tenant_id}/plan", json={"plan": "none"}, headers=admin), "invalid-plan")
    assert error == {"location": "body.plan", "reason": "plan 'none' is not defined"}
    # An override names its meter in the path, not in its body.
    for meter in ("zzz", "speed"):
        response = await put(f"/v1/tenants/{tenant_id}/quotas/{meter}", json={"limit": 1, "period": "DAY"}, headers=admin)
        [error] = errors_of(response, "invalid-quota")
        assert error["location"] == "path.meter" and repr(meter) in error["reason"]
    # A price's fields, where the body has them: no union tag (`per_unit`) between the item and its
    # field, and the rules across fields (an amount in the currency) at the amount itself.
    tiers = [{"up_to": 10, "unit_price": "1", "flat_price": "1.00"}, {"up_to": None, "unit_price": "1", "flat_price": "0.001"}]
    prices = {
        "currency": "USD",
        "entitlements": [],
        "prices": [
            {"meter": "tokens", "model": "per_unit", "unit_price": "1", "included": -5},
            {"meter": "tokens", "model": "graduated", "tiers": tiers},
        ],
    }
    [error] = errors_of(await put("/v1/plans/p", json=prices, headers=admin), "invalid-body")
    assert error["location"] == "body.prices.0.included", error
    prices["prices"][0].pop("included")
    found = errors_of(await put("/v1/plans/p", json=prices, headers=admin), "invalid-body")
    assert {e["location"]: e["reason"] for e in found} == {
        "body.prices.1.tiers.1.flat_price": "'0.001' has more decimals than USD has minor units (2)",
        "body.prices.1.meter": "one price per meter: tokens appears before",
    }
    missing = {"currency": "USD", "entitlements": [], "prices": [{"meter": "tokens", "model": "per_unit"}]}
    [error] = errors_of(await put("/v1/plans/p", json=missing, headers=admin), "invalid-body")
    assert error["location"] == "body.prices.0.unit_price", error
    # A slug the route would make, that is no slug: 422 at the path, not a 404 (it names nothing yet).
    [error] = errors_of(await put("/v1/plans/Pro%20Plan", json={"entitlements": []}, headers=admin), "invalid-request")
    assert error["location"] == "path.slug" and "pattern" in error["reason"]
    response = await put(f"/v1/tenants/{tenant_id}/quotas/Tokens!", json={"limit": 1, "period": "DAY"}, headers=admin)
    [error] = errors_of(response, "invalid-request")
    assert error["location"] == "path.meter"
    found = errors_of(await put("/v1/slos/My%20SLO", json={}, headers=admin), "invalid-body")  # its body too
    assert "path.name" in [e["location"] for e in found]
    # A breach detected in the future (the GDPR commands' rules).
    breach = {"detected_at": "2999-01-01T00:00:00Z", "scope": "a typo in the year"}
    [error] = errors_of(await omni.client.post("/v1/gdpr/breaches", json=breach, headers=admin), "invalid-breach")
    assert error["location"] == "body.detected_at" and "future" in error["reason"]


async def test_length_limits_on_text_count_characters(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant()
    consume = "/v1/quotas/tokens/consume"
    long_subject = {"amount": 1, "idempotency_key": "k", "subject": "é" * 257}
    [error] = errors_of(await omni.client.post(consume, json=long_subject, headers=omni.auth(key)), "invalid-body")
    assert error == {"location": "body.subject", "reason": "String should have at most 256 characters"}
    empty_key = {"amount": 1, "idempotency_key": ""}
    [error] = errors_of(await omni.client.post(consume, json=empty_key, headers=omni.auth(key)), "invalid-body")
    assert error == {"location": "body.idempotency_key", "reason": "String should have at least 1 character"}
    # A list's limit still counts items.
    thresholds = {"limit": 1, "period": "DAY", "thresholds": list(range(1, 12))}
    response = await omni.client.put(f"/v1/tenants/{uuid.uuid4()}/quotas/tokens", json=thresholds, headers=omni.auth(ADMIN))
    [error] = errors_of(response, "invalid-body")
    assert error["location"] == "body.thresholds" and "at most 10 items" in error["reason"]


async def test_every_422_lists_its_reason_at_its_place(omni: Omni) -> None:
    """The routes' own refusals (not the request's shape, not a command's rule) list their reason in
    `errors` too, at the query parameter, path or body member they are about."""
    await omni.meter(**TOKENS)
    await omni.meter(**CALLS)
    await omni.meter(**LATEST)
    await omni.settle()
    _, key = await omni.tenant()
    auth, get, post = omni.auth(key), omni.client.get, omni.client.post
    refused = [
        (await get("/v1/meters/tokens/query", params={"from": "2026-01-01T00:00:30Z"}, headers=auth), "query.from"),
        (
            await get(
                "/v1/meters/tokens/query", params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, headers=auth
            ),
            "query.to",
        ),
        (await get("/v1/meters/tokens/query", params={"group_by": "colour"}, headers=auth), "query.group_by"),
        (await get("/v1/meters/tokens/query", params={"as_of": "2999-01-01T00:00:00Z"}, headers=auth), "query.as_of"),
        (await post("/v1/quotas/speed/consume", json={"amount": 1, "idempotency_key": "a"}, headers=auth), "path.meter"),
        (await post("/v1/quotas/calls/consume", json={"amount": 2, "idempotency_key": "b"}, headers=auth), "body.amount"),
        (
            await post(
                "/v1/quotas/tokens/consume", json={"amount": 1, "idempotency_key": "c", "data": {"x": "\0"}}, headers=auth
            ),
            "body.data",
        ),
        (await get("/v1/notifications", params={"before": "nonsense"}, headers=auth), "query.before"),
        (await get("/v1/quotas", headers=omni.auth(ADMIN)), "query.tenant"),
    ]
    for response, location in refused:
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["errors"] == [{"location": location, "reason": body["detail"]}], body


async def test_instance_is_the_request_path_as_a_uri_reference(omni: Omni) -> None:
    """RFC 9457's `instance` is a URI reference: the path is encoded again as sent, never with a raw
    space, NUL or non-ASCII character from its decoded form."""
    admin = omni.auth(ADMIN)
    missing = await omni.client.get("/v1/data-classes/com.example%2Fchat%20v2", headers=admin)
    assert missing.status_code == 404 and missing.json()["instance"] == "/v1/data-classes/com.example/chat%20v2"
    nul = await omni.client.put("/v1/data-classes/%00", json={"personal": ["$.data.email"]}, headers=admin)
    assert nul.status_code == 422 and nul.json()["instance"] == "/v1/data-classes/%00"
    accented = await omni.client.get("/v1/plans/caf%C3%A9%25", headers=admin)
    assert accented.status_code == 404 and accented.json()["instance"] == "/v1/plans/caf%C3%A9%25"
    plain = await omni.client.get("/v1/plans/nope", headers=admin)
    assert plain.json()["instance"] == "/v1/plans/nope"


async def test_json_that_does_not_parse_is_400_at_the_body_with_the_character_in_the_reason(omni: Omni) -> None:
    broken = await omni.client.post(
        "/v1/gdpr/requests", content=b"{not json", headers={**omni.auth(ADMIN), "Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and broken.headers["content-type"] == "application/problem+json", broken.text
    assert broken.json()["title"] == "Malformed JSON"
    [error] = broken.json()["errors"]
    assert error["location"] == "body" and error["reason"].endswith("at character 1"), error  # not `body.1`
