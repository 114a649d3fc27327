"""Plans and quotas over the API, in both modes: plans as data, consume's exact enforcement, facts
never refused, threshold notifications once, overrides, bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from omni.settings import Mode
from schemas.envelope import decode
from stores import views
from streams.projectors import METERS
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni
from tests.topic_records import assert_readable_by_outsiders

TOKENS = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
CALLS = {"slug": "calls", "event_type": "request", "aggregation": "COUNT"}
LATEST = {"slug": "speed", "event_type": "inference", "aggregation": "MAX", "value_property": "$.data.tokens"}


async def put_plan(omni: Omni, slug: str, *entitlements: dict[str, Any], status: int | None = None) -> httpx.Response:
    response = await omni.client.put(f"/v1/plans/{slug}", json={"entitlements": list(entitlements)}, headers=omni.auth(ADMIN))
    await omni.settle()
    if status is not None:
        assert response.status_code == status, response.text
    return response


async def on_plan(omni: Omni, tenant_id: str, slug: str) -> None:
    response = await omni.client.put(f"/v1/tenants/{tenant_id}/plan", json={"plan": slug}, headers=omni.auth(ADMIN))
    assert response.status_code == 204, response.text
    await omni.settle()


async def on_a_tokens_plan(omni: Omni, limit: int, period: str) -> tuple[str, str]:
    """The tokens meter, a plan "pro" limiting it, and a new tenant on that plan: its id and key."""
    await omni.meter(**TOKENS)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": limit, "period": period}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    return tenant_id, key


async def consume(
    omni: Omni, key: str, meter: str, amount: Any, idempotency_key: str | None = None, **extra: Any
) -> httpx.Response:
    body = {"amount": amount, "idempotency_key": idempotency_key or uuid.uuid4().hex, **extra}
    return await omni.client.post(f"/v1/quotas/{meter}/consume", json=body, headers=omni.auth(key))


async def notices_on_the_log(omni: Omni) -> list[str]:
    """The ids of the notices on the notifications topic, in every partition, each record read as an
    outside consumer reads it (README, "Topics")."""
    log, topic = omni.platform.log, omni.platform.topics.notifications
    found = []
    for partition in range(omni.platform.topics.partitions(topic)):
        for record in await log.read(topic, partition, 0, 1000):
            event = assert_readable_by_outsiders(record.headers, record.key, record.value)
            assert event.type == "omni.quota.threshold_crossed" and event.data["meter"] == "calls"
            found.append(event.data["id"])
    return sorted(found)


async def quota(omni: Omni, key: str, meter: str) -> dict[str, Any]:
    response = await omni.client.get(f"/v1/quotas/{meter}", headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_plans_are_versioned_data(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    first = await put_plan(omni, "pro", {"meter": "tokens", "limit": 1000, "period": "DAY"}, status=201)
    assert first.json()["version"] == 1
    assert first.json()["entitlements"] == [
        {"meter": "tokens", "limit": 1000, "period": "DAY", "enforcement": "hard", "thresholds": [80, 100]}
    ]
    same = await put_plan(omni, "pro", {"meter": "tokens", "limit": 1000, "period": "DAY"}, status=200)
    assert same.json()["version"] == 1, "an unchanged body is no new version"
    changed = await put_plan(omni, "pro", {"meter": "tokens", "limit": 2000, "period": "MONTH", "thresholds": [50]}, status=200)
    assert changed.json()["version"] == 2
    listed = (await omni.client.get("/v1/plans", headers=omni.auth(ADMIN))).json()["data"]
    assert [(p["slug"], p["version"], p["entitlements"][0]["limit"]) for p in listed] == [("pro", 2, 2000)]
    await omni.meter(**CALLS)
    both = [
        {"meter": "tokens", "limit": 2000, "period": "MONTH", "thresholds": [50]},
        {"meter": "calls", "limit": 5, "period": "DAY"},
    ]
    assert (await put_plan(omni, "pro", *both, status=200)).json()["version"] == 3
    reordered = await put_plan(omni, "pro", *reversed(both), status=200)
    assert reordered.json()["version"] == 3, "one entitlement per meter: their order is no change"
    _, key = await omni.tenant()
    assert (await omni.client.get("/v1/plans/pro", headers=omni.auth(key))).status_code == 200
    assert (await omni.client.get("/v1/plans/none", headers=omni.auth(key))).status_code == 404


async def test_bad_plans_are_refused_and_nothing_is_stored(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await omni.meter(**LATEST)
    _, key = await omni.tenant()
    cases = [
        {"meter": "speed", "limit": 10, "period": "DAY"},  # a MAX meter
        {"meter": "nothing", "limit": 10, "period": "DAY"},  # unknown
        {"meter": "tokens", "limit": -1, "period": "DAY"},  # negative
        {"meter": "tokens", "limit": "ten", "period": "DAY"},
        {"meter": "tokens", "limit": 10, "period": "WEEK"},
        {"meter": "tokens", "limit": 0.0001, "period": "DAY"},  # milli-units at most
        {"meter": "tokens", "limit": 10**12, "period": "DAY"},
    ]
    for entitlement in cases:
        response = await put_plan(omni, "bad", entitlement)
        assert response.status_code == 422, (entitlement, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    await omni.meter(**CALLS)
    halves = await put_plan(omni, "bad", {"meter": "calls", "limit": 2.5, "period": "DAY"})  # a COUNT counts events
    assert halves.status_code == 422 and halves.json()["errors"] == [
        {
            "location": "body.entitlements.0.limit",
            "reason": "meter 'calls' counts events: its limit must be a whole number, not 2.5",
        }
    ], halves.text
    tenant_id, _ = await omni.tenant("halves")
    override = await omni.client.put(
        f"/v1/tenants/{tenant_id}/quotas/calls", json={"limit": 2.5, "period": "DAY"}, headers=omni.auth(ADMIN)
    )
    assert override.status_code == 422 and override.json()["errors"][0]["location"] == "body.limit", override.text
    twice = await put_plan(
        omni, "bad", {"meter": "tokens", "limit": 1, "period": "DAY"}, {"meter": "tokens", "limit": 2, "period": "DAY"}
    )
    assert twice.status_code == 422
    lone_surrogate = await omni.client.put(  # not Unicode: a 500 from the event store's encoding before
        "/v1/plans/bad",
        content=b'{"name": "\\ud800", "entitlements": []}',
        headers={**omni.auth(ADMIN), "content-type": "application/json"},
    )
    assert lone_surrogate.status_code == 422, lone_surrogate.text
    forbidden = await omni.client.put("/v1/plans/x", json={"entitlements": []}, headers=omni.auth(key))
    assert forbidden.status_code == 403
    assert (await omni.client.get("/v1/plans", headers=omni.auth(ADMIN))).json()["data"] == []


async def test_concurrent_consumers_never_pass_a_hard_limit(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 1000, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")

    answers = await asyncio.gather(*(consume(omni, key, "tokens", 30) for _ in range(60)))
    accepted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(accepted) + len(refused) == 60, [a.text for a in answers if a.status_code not in (200, 429)]
    assert len(accepted) == 33, "1000 // 30 fit; demand was 1800"
    assert max(a.json()["used"] for a in accepted) == 990
    problem = refused[0].json()
    assert problem["meter"] == "tokens" and problem["limit"] == 1000 and problem["used"] == 990
    assert int(refused[0].headers["Retry-After"]) >= 1
    # Demand beyond the limit fills it exactly.
    assert (await consume(omni, key, "tokens", 10)).json()["remaining"] == 0
    assert (await consume(omni, key, "tokens", 1)).status_code == 429

    await omni.settle()
    assert (await quota(omni, key, "tokens"))["used"] == 1000
    rows = await omni.query(key, "tokens")
    assert sum(row["value"] for row in rows) == 1000, "the meter counts exactly what consume accepted"


async def test_a_retry_returns_the_first_answer_and_counts_nothing(omni: Omni) -> None:
    _, key = await on_a_tokens_plan(omni, 100, "MONTH")
    first = await consume(omni, key, "tokens", 60, "req-1")
    again = await consume(omni, key, "tokens", 60, "req-1")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    # Told apart as every POST's replay is: a gateway knows a consume counted now from one before.
    assert ("idempotent-replayed" not in first.headers, again.headers.get("idempotent-replayed")) == (True, "true")
    refused = await consume(omni, key, "tokens", 60, "req-2")
    assert refused.status_code == 429 and "idempotent-replayed" not in refused.headers
    refused_again = await consume(omni, key, "tokens", 60, "req-2")
    assert refused_again.status_code == 429, "a refusal is the answer too"
    assert refused_again.headers.get("idempotent-replayed") == "true"
    reused = await consume(omni, key, "tokens", 5, "req-1")
    assert reused.status_code == 409, "the same key for another request"
    whole = await consume(omni, key, "tokens", 101, "req-3")
    assert whole.status_code == 429 and "passes the whole limit: no period takes it at once" in whole.json()["detail"]
    assert "whole limit" not in refused.json()["detail"], refused.text
    await omni.settle()
    assert sum(row["value"] for row in await omni.query(key, "tokens")) == 60


async def test_facts_count_but_are_never_refused(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 100, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    assert (await consume(omni, key, "tokens", 40)).status_code == 200
    facts = await omni.send(key, [cloud_event(f"f{i}", type_="inference", data={"tokens": 50}) for i in range(3)])
    assert facts.status_code == 202 and facts.json()["accepted"] == 3, "facts past the limit are still recorded"
    await omni.settle()
    past = await quota(omni, key, "tokens")
    # As a gateway reads an entitlement (OpenMeter's four facts): no access, nothing left, 90 over.
    assert (past["used"], past["remaining"], past["has_access"], past["overage"]) == (190, 0, False, 90)
    assert (await consume(omni, key, "tokens", 1)).status_code == 429, "facts count against the quota"
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 100, "period": "DAY", "enforcement": "soft"}, status=200)
    soft = await quota(omni, key, "tokens")
    assert (soft["has_access"], soft["overage"], soft["enforcement"]) == (True, 90, "soft"), "a soft limit never refuses"


async def test_a_consume_counts_for_every_meter_of_its_type(omni: Omni) -> None:
    """Two additive meters over one event type: the consume of one records an event the other
    counts too, as a fact, so the other's quota says what its meter says and its own consumes are
    refused past its limit (they were accepted: the fold left the event out of every meter's
    quota, not only the consumed one's)."""
    await omni.meter(**TOKENS)
    await omni.meter(slug="inferences", event_type="inference", aggregation="COUNT")
    await put_plan(
        omni,
        "pro",
        {"meter": "tokens", "limit": 1000, "period": "DAY"},
        {"meter": "inferences", "limit": 2, "period": "DAY"},
        status=201,
    )
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    for _ in range(3):
        assert (await consume(omni, key, "tokens", 40)).status_code == 200
    await omni.settle()
    assert (await quota(omni, key, "tokens"))["used"] == 120, "the consumed meter counts each once"
    assert (await quota(omni, key, "inferences"))["used"] == 3
    assert (await consume(omni, key, "inferences", 1)).status_code == 429
    await omni.settle()
    assert sum(row["value"] for row in await omni.query(key, "inferences")) == 3
    assert sum(row["value"] for row in await omni.query(key, "tokens")) == 120


async def test_thresholds_are_notified_once_per_period(omni: Omni) -> None:
    await omni.meter(**CALLS)
    await put_plan(omni, "pro", {"meter": "calls", "limit": 10, "period": "DAY", "thresholds": [50, 80, 100]}, status=201)
    tenant_id, key = await omni.tenant()
    _, other_key = await omni.tenant("other", plan="free")
    await on_plan(omni, tenant_id, "pro")
    for _ in range(4):
        assert (await consume(omni, key, "calls", 1)).status_code == 200
    await omni.settle()
    assert (await omni.client.get("/v1/notifications", headers=omni.auth(key))).json()["data"] == []
    await omni.send(key, [cloud_event(f"c{i}", type_="request") for i in range(6)])
    await omni.settle()
    for _ in range(3):
        await consume(omni, key, "calls", 1)
    await omni.settle()
    notes = (await omni.client.get("/v1/notifications", headers=omni.auth(key))).json()["data"]
    assert sorted(n["threshold"] for n in notes) == [50, 80, 100]
    assert all(n["type"] == "omni.quota.threshold_crossed" and n["meter"] == "calls" and n["limit"] == 10 for n in notes)
    assert (await omni.client.get("/v1/notifications", headers=omni.auth(other_key))).json()["data"] == []
    admin_view = await omni.client.get("/v1/notifications", params={"tenant": tenant_id}, headers=omni.auth(ADMIN))
    assert len(admin_view.json()["data"]) == 3
    # Each on the notifications topic once, even when the views find them again (a replay).
    assert await notices_on_the_log(omni) == sorted(n["id"] for n in notes)
    with omni.platform.db.transaction() as tx:
        tx.execute("UPDATE notifications SET recorded = 0")
    await omni.settle()
    assert await notices_on_the_log(omni) == sorted(n["id"] for n in notes)
    page = (await omni.client.get("/v1/notifications", params={"limit": 2}, headers=omni.auth(key))).json()
    rest = await omni.client.get("/v1/notifications", params={"limit": 2, "before": page["next_before"]}, headers=omni.auth(key))
    assert [n["id"] for n in page["data"] + rest.json()["data"]] == [n["id"] for n in notes]


async def test_thresholds_one_consume_crosses_together_are_published_lowest_first(omni: Omni) -> None:
    """They share the consume's time; recorded in their ids' order they went out 100, 80, 50 (a
    walkthrough's webhook receiver, acting on the last notice it got, was left at 50 %)."""
    await omni.meter(**TOKENS)
    thresholds = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 1000, "period": "DAY", "thresholds": thresholds}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    assert (await consume(omni, key, "tokens", 1000)).status_code == 200
    await omni.settle()
    log, topic = omni.platform.log, omni.platform.topics.notifications
    published = [
        json.loads(record.value)["data"]
        for partition in range(omni.platform.topics.partitions(topic))
        for record in await log.read(topic, partition, 0, 1000)
    ]
    assert len({notice["occurred_at"] for notice in published}) == 1  # crossed together
    assert [notice["threshold"] for notice in published] == thresholds


async def test_an_override_replaces_the_plan_and_usage_carries_over(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 100, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    assert (await consume(omni, key, "tokens", 100)).status_code == 200
    assert (await consume(omni, key, "tokens", 1)).status_code == 429
    response = await omni.client.put(
        f"/v1/tenants/{tenant_id}/quotas/tokens", json={"limit": 150, "period": "DAY"}, headers=omni.auth(ADMIN)
    )
    assert response.status_code == 204, response.text
    await omni.settle()
    current = await quota(omni, key, "tokens")
    assert (current["source"], current["limit"], current["used"], current["remaining"]) == ("override", 150, 100, 50)
    assert (current["has_access"], current["overage"]) == (True, 0)
    assert (await consume(omni, key, "tokens", 50)).status_code == 200
    removed = await omni.client.delete(f"/v1/tenants/{tenant_id}/quotas/tokens", headers=omni.auth(ADMIN))
    assert removed.status_code == 204
    await omni.settle()
    assert (await quota(omni, key, "tokens"))["source"] == "plan"
    again = await omni.client.delete(f"/v1/tenants/{tenant_id}/quotas/tokens", headers=omni.auth(ADMIN))
    assert again.status_code == 404
    # A plan change mid-period: the new limit applies to the usage so far.
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 400, "period": "DAY"}, status=200)
    assert (await quota(omni, key, "tokens"))["remaining"] == 250


async def test_bad_consumes_are_refused_and_count_nothing(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await omni.meter(**CALLS)
    await omni.meter(**LATEST)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 100, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    for amount in (0, -5, "lots", None, 10**12, 0.0005, 1e-9, True, "NaN"):
        response = await consume(omni, key, "tokens", amount)
        assert response.status_code == 422, (amount, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert (await omni.client.post("/v1/quotas/tokens/consume", json={"amount": 1}, headers=omni.auth(key))).status_code == 422
    assert (await consume(omni, key, "nothing", 1)).status_code == 404
    assert (await consume(omni, key, "speed", 1)).status_code == 422
    assert (await consume(omni, key, "calls", 2)).status_code == 422
    assert (await consume(omni, ADMIN, "tokens", 1)).status_code == 403
    await omni.settle()
    assert (await quota(omni, key, "tokens"))["used"] == 0
    assert await omni.query(key, "tokens") == []


async def test_amounts_and_limits_are_read_as_written(omni: Omni) -> None:
    """A fraction used to reach the quantity's checks as a binary float: 1 and 34 zeros and a 1 was
    counted as 1, 0.00099999999999999999999 as 0.001, where three decimal places are taken at most.
    NaN and Infinity, which are not JSON, were taken in `data` and written to the log as null."""
    tenant_id, key = await on_a_tokens_plan(omni, 100, "DAY")
    headers = {**omni.auth(key), "content-type": "application/json"}

    async def sent(amount: str, data: str = "null", idempotency_key: str = "") -> httpx.Response:
        body = f'{{"amount": {amount}, "idempotency_key": "{idempotency_key or uuid.uuid4().hex}", "data": {data}}}'
        return await omni.client.post("/v1/quotas/tokens/consume", content=body.encode(), headers=headers)

    for amount, reason in (
        ("1.00000000000000000000000000000000001", "amount may have at most 3 decimal places"),
        ("0.00099999999999999999999", "amount may have at most 3 decimal places"),
        ("1e-400", "amount may have at most 3 decimal places"),
        ("99999999999.9999999999999", "amount may have at most 3 decimal places"),
    ):
        refused = await sent(amount)
        assert refused.status_code == 422, (amount, refused.text)
        assert [(e["location"], e["reason"]) for e in refused.json()["errors"]] == [("body.amount", reason)], refused.text
    exponents = (("1e999999999999999999999", "null"), ("1", '{"x": 1.5e-999999999999999999999999}'))  # a 500 before
    for amount, data in (("NaN", "null"), ("1", '{"x": NaN}'), ("1", '{"x": [1, -Infinity]}'), ("Infinity", "null"), *exponents):
        broken = await sent(amount, data)
        assert broken.status_code == 400 and broken.json()["title"] == "Malformed JSON", (amount, data, broken.text)
        (error,) = broken.json()["errors"]
        assert error["location"] == "body" and "is not a JSON number" in error["reason"], error
    past_a_double = await sent("1", '{"x": 1e400}')  # a decimal, but no double: written to the log as null before
    assert past_a_double.status_code == 422 and past_a_double.json()["errors"][0]["location"] == "body.data", past_a_double.text
    not_a_constant = await sent("1", '{"note": "NaN, Infinity"}')  # in a string: text, not a number
    assert not_a_constant.status_code == 200, not_a_constant.text
    taken = await sent("2.5", '{"ratio": 0.1, "big": 12345678901234567890.5}', idempotency_key="exact")
    assert taken.status_code == 200 and taken.json()["used"] == 3.5, taken.text
    await omni.settle()
    assert (await quota(omni, key, "tokens"))["used"] == 3.5
    records = [
        decode(r.value)
        for p in range(omni.platform.topics.partitions(omni.platform.topics.usage))
        for r in await omni.platform.log.read(omni.platform.topics.usage, p, 0, 100)
    ]
    (event,) = [e for e in records if e.source_id == "exact"]
    assert event.data == {"ratio": 0.1, "big": 12345678901234567890.5, "tokens": 2.5}, event.data

    limit = await omni.client.put(
        "/v1/plans/pro",
        content=b'{"entitlements": [{"meter": "tokens", "limit": 100.00000000000000000001, "period": "DAY"}]}',
        headers={**omni.auth(ADMIN), "content-type": "application/json"},
    )
    assert limit.status_code == 422 and "at most 3 decimal places" in limit.text, limit.text
    override = await omni.client.put(
        f"/v1/tenants/{tenant_id}/quotas/tokens",
        content=b'{"limit": 5.0000000000000000001, "period": "DAY"}',
        headers={**omni.auth(ADMIN), "content-type": "application/json"},
    )
    assert override.status_code == 422 and "at most 3 decimal places" in override.text, override.text
    assert (await quota(omni, key, "tokens"))["limit"] == 100


async def test_consume_data_is_held_to_the_rules_of_events(omni: Omni) -> None:
    """What POST /v1/events refuses in an event's data, consume refuses in its own: text the views
    cannot store (NUL, in a value or a key), text that is not Unicode (a lone surrogate: a 500
    before), nesting past OMNI_MAX_JSON_DEPTH, an event past OMNI_MAX_EVENT_BYTES. Accepted, the
    first were counted by the quota and then dead-lettered by the meters: usage never billed."""
    await omni.meter(**TOKENS)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 10**9, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"a": deep}
    headers = {**omni.auth(key), "content-type": "application/json"}
    bodies = [
        json.dumps({"amount": 1, "idempotency_key": "nul-value", "data": {"x": "a\u0000b"}}),
        json.dumps({"amount": 1, "idempotency_key": "nul-key", "data": {"a\u0000b": 1}}),
        json.dumps({"amount": 1, "idempotency_key": "deep", "data": deep}),
        json.dumps({"amount": 1, "idempotency_key": "large", "data": {"x": "y" * 1_000_000}}),
        '{"amount": 1, "idempotency_key": "surrogate", "data": {"x": "\\ud800"}}',
        '{"amount": 1, "idempotency_key": "surrogate-key", "data": {"\\udfff": 1}}',
        '{"amount": 1, "idempotency_key": "surrogate-subject", "subject": "\\ud800"}',
    ]
    # Far deeper (a 500 before: the walk reading fractions ran past Python's recursion limit),
    # objects, arrays, and a fraction at the bottom, which the walk leaves as it came.
    too_deep = ['{"a":' * 600 + "1" + "}" * 600, "[" * 600 + "1" + "]" * 600, "[" * 300 + "1.5" + "]" * 300]
    bodies += [f'{{"amount": 1, "idempotency_key": "too-deep-{i}", "data": {{"x": {d}}}}}' for i, d in enumerate(too_deep)]
    for body in bodies:
        response = await omni.client.post("/v1/quotas/tokens/consume", content=body.encode(), headers=headers)
        assert response.status_code == 422, (body[:80], response.text[:300])
        assert response.headers["content-type"] == "application/problem+json"
        if "too-deep" in body:
            assert "data nests deeper than 32 levels" in response.text, response.text[:300]
    huge = await omni.client.post(
        "/v1/quotas/tokens/consume",
        content=b'{"amount": 1, "idempotency_key": "huge", "data": {"n": 1' + b"0" * 30 + b"}}",
        headers=headers,
    )
    assert huge.status_code == 422 and "an integer past 64 bits" in huge.text, huge.text  # it was told "not Unicode"
    assert (await consume(omni, key, "tokens", 2, data={"x": "fine"})).status_code == 200
    await omni.settle()
    assert (await quota(omni, key, "tokens"))["used"] == 2
    assert sum(row["value"] for row in await omni.query(key, "tokens")) == 2, "the quota and the meter agree"


async def test_a_fact_finer_than_a_milli_unit_counts_exactly_against_the_limit(omni: Omni) -> None:
    """Embedded mode counts a fact of finer grain than a consume's exactly: after 99.9994, a consume
    of 0.001 would pass the limit of 100, and is refused. (Kafka mode's hot counters count whole
    milli-units, rounded half to even, so there it is taken: README, Quotas.)"""
    if omni.platform.settings.mode is not Mode.EMBEDDED:
        pytest.skip("the hot counters in Redis count whole milli-units")
    _, key = await on_a_tokens_plan(omni, 100, "DAY")
    assert (await omni.send(key, [cloud_event("fine", data={"tokens": "99.9994"})])).status_code == 202
    await omni.settle()
    assert (await consume(omni, key, "tokens", 0.001)).status_code == 429
    await omni.settle()
    assert sum(row["value"] for row in await omni.query(key, "tokens")) == Decimal("99.9994")


async def test_a_quota_has_access_while_the_least_consume_would_be_taken(omni: Omni) -> None:
    """A fact of finer grain than a consume's (a milli-unit) can leave less than one: `has_access`
    said true while every consume was refused. (Kafka mode's hot counters count milli-units: there
    such a fact is rounded, README "Quotas", so the exact remainder is the embedded runner's.)"""
    if omni.platform.settings.mode is not Mode.EMBEDDED:
        pytest.skip("the hot counters in Redis count whole milli-units")
    tenant_id, key = await on_a_tokens_plan(omni, 20, "DAY")
    assert (await omni.send(key, [cloud_event("fine", data={"tokens": "19.9995"})])).status_code == 202
    await omni.settle()
    read = await quota(omni, key, "tokens")
    assert (read["used"], read["remaining"], read["has_access"]) == (19.9995, 0.0005, False), read
    assert (await consume(omni, key, "tokens", 0.001)).status_code == 429
    assert (await omni.send(key, [cloud_event("back", data={"tokens": "-0.0005"})])).status_code == 202
    await omni.settle()
    read = await quota(omni, key, "tokens")
    assert (read["remaining"], read["has_access"]) == (0.001, True), read
    assert (await consume(omni, key, "tokens", 0.001)).status_code == 200
    assert tenant_id


async def test_another_tenants_quota_is_not_found(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 100, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant()
    _, other_key = await omni.tenant("other", plan="free")
    await on_plan(omni, tenant_id, "pro")
    assert (await omni.client.get("/v1/quotas", params={"tenant": tenant_id}, headers=omni.auth(other_key))).status_code == 404
    assert (await omni.client.get("/v1/quotas/tokens", headers=omni.auth(other_key))).status_code == 404
    listed = await omni.client.get("/v1/quotas", params={"tenant": tenant_id}, headers=omni.auth(ADMIN))
    assert [q["meter"] for q in listed.json()["data"]] == ["tokens"]
    assert (await omni.client.get("/v1/quotas", headers=omni.auth(other_key))).json()["data"] == []


async def test_consume_without_a_quota_records_and_never_refuses(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant()
    await omni.settle()
    answer = await consume(omni, key, "tokens", 5, data={"model": "large"})
    assert answer.status_code == 200
    assert answer.json()["limit"] is None and answer.json()["used"] == 5
    await omni.settle()
    assert sum(row["value"] for row in await omni.query(key, "tokens")) == 5


def test_periods_split_at_utc_boundaries() -> None:
    from projections.quotas import period_of
    from schemas.plans import Period

    last = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    first = last + timedelta(microseconds=1)
    assert period_of(last, Period.DAY).label == "2026-12-31" and period_of(first, Period.DAY).label == "2027-01-01"
    assert period_of(last, Period.MONTH).label == "2026-12" and period_of(first, Period.MONTH).label == "2027-01"
    assert period_of(last, Period.MONTH).end == first
    assert json.dumps(period_of(first, Period.DAY).text) == '"D:2027-01-01"'


async def test_periods_reset_at_midnight_utc_and_nothing_counts_in_two(omni: Omni) -> None:
    await omni.meter(**CALLS)
    await put_plan(omni, "pro", {"meter": "calls", "limit": 3, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    last_instant = midnight - timedelta(microseconds=1)
    facts = [cloud_event("late", type_="request", time=last_instant), cloud_event("early", type_="request", time=midnight)]
    assert (await omni.send(key, facts)).status_code == 202
    await omni.settle()

    omni.platform.clock = lambda: last_instant
    answers = [await consume(omni, key, "calls", 1, f"yesterday-{n}") for n in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429], "the fact took one of yesterday's three"
    assert answers[0].json()["period_end"] == midnight.isoformat().replace("+00:00", "Z")
    assert answers[2].headers["retry-after"] == "1"
    omni.platform.clock = lambda: midnight
    # A retry after Retry-After: the accepted answer is given again, the refusal's day is over and
    # the retry is decided in the new one (it was given the old 429 again, with Retry-After: 1).
    replayed = await consume(omni, key, "calls", 1, "yesterday-0")
    assert replayed.status_code == 200 and replayed.json() == answers[0].json(), replayed.text
    retried = await consume(omni, key, "calls", 1, "yesterday-2")
    assert retried.status_code == 200 and retried.json()["used"] == 2, retried.text
    assert (await consume(omni, key, "calls", 1, "yesterday-2")).json() == retried.json(), "kept, now it was taken"
    answers = [await consume(omni, key, "calls", 1) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429], "a new day, less the fact at its first instant and the retry"

    await omni.settle()
    days = await omni.query(
        key,
        "calls",
        window_size="DAY",
        **{"from": (midnight - timedelta(days=1)).isoformat(), "to": (midnight + timedelta(days=1)).isoformat()},
    )
    assert {row["window_start"]: row["value"] for row in days} == {
        (midnight - timedelta(days=1)).isoformat().replace("+00:00", "Z"): 3,
        midnight.isoformat().replace("+00:00", "Z"): 3,
    }


async def test_consumes_records_carry_the_callers_trace(omni: Omni) -> None:
    """A consume's usage record and a refusal's record join the caller's trace, as an ingested
    event's does (OpenTelemetry's messaging conventions: the context in the record's `traceparent`
    header): they went onto the log without one, so a consume's fold was a trace of its own."""
    from schemas.envelope import decode

    _, key = await on_a_tokens_plan(omni, 10, "DAY")
    trace = "5bf92f3577b34da6a3ce929d0e0e4731"
    headers = {**omni.auth(key), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    for idempotency_key, amount, status in (("traced-accepted", 6, 200), ("traced-refused", 6, 429)):
        body = {"amount": amount, "idempotency_key": idempotency_key}
        response = await omni.client.post("/v1/quotas/tokens/consume", json=body, headers=headers)
        assert response.status_code == status, response.text
        assert response.headers["traceparent"].split("-")[1] == trace
    topic = omni.platform.topics.usage
    records = [r for p in range(omni.platform.topics.partitions(topic)) for r in await omni.platform.log.read(topic, p, 0, 100)]
    traced = {}
    for record in records:
        event = decode(record.value)
        if event.source_id in ("traced-accepted", "traced-refused"):
            header = dict(record.headers).get("traceparent")
            traced[event.source_id] = (event.traceparent, None if header is None else header.decode())
    assert traced.keys() == {"traced-accepted", "traced-refused"}
    for kept, header in traced.values():
        assert kept is not None and kept.split("-")[1] == trace
        assert header == kept


async def test_a_quota_reads_a_huge_fact_as_exactly_as_its_meter(omni: Omni) -> None:
    """Usage adds exactly, as the meters add it: 28 digits (Python's default) made `used` differ from
    the meter for a fact of 30; Kafka mode's counter saturates past any limit and is read from the
    views then."""
    tenant_id, key = await on_a_tokens_plan(omni, 1000, "DAY")
    event = b'{"specversion":"1.0","id":"huge","source":"s","type":"inference","subject":"u","data":{"tokens":123456789012345678901234567890}}'
    sent = await omni.client.post(
        "/v1/events", content=event, headers={**omni.auth(key), "Content-Type": "application/cloudevents+json"}
    )
    assert sent.status_code == 202, sent.text
    assert (await omni.send(key, [cloud_event("small", data={"tokens": 369})])).status_code == 202
    await omni.settle()
    assert (await consume(omni, key, "tokens", 1)).status_code == 429, "far past the limit"
    metered = await omni.client.get("/v1/meters/tokens/query", headers=omni.auth(key))
    value = json.loads(metered.text, parse_float=Decimal)["data"][0]["value"]
    used = (await quota(omni, key, "tokens"))["used"]
    assert Decimal(str(used)) == Decimal(str(value)) and Decimal(str(used)) > 10**29, (used, value, tenant_id)


async def test_a_meter_defined_after_its_events_counts_them_against_its_quota(omni: Omni) -> None:
    """Usage that arrived before its meter was defined is the meter's usage (the meter covers the
    whole history), so a quota on it counts that usage too: consume is refused past the limit, and
    the quota reads what the meter says."""
    tenant_id, key = await omni.tenant()
    await omni.meter(**CALLS)
    await omni.settle()
    assert (await consume(omni, key, "calls", 1)).status_code == 200, "the counters are built before the meter exists"
    early = await omni.send(key, [cloud_event(f"early-{i}", type_="inference", data={"tokens": 50}) for i in range(2)])
    assert early.status_code == 202, early.text
    await omni.settle()
    await omni.meter(**TOKENS)
    await omni.settle()
    assert sum(row["value"] for row in await omni.query(key, "tokens")) == 100, "the meter covers its history"
    await put_plan(omni, "late", {"meter": "tokens", "limit": 150, "period": "DAY"}, status=201)
    await on_plan(omni, tenant_id, "late")
    assert (await quota(omni, key, "tokens"))["used"] == 100
    assert (await consume(omni, key, "tokens", 60)).status_code == 429, "100 were used before the meter existed"
    accepted = await consume(omni, key, "tokens", 50)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["used"] == 150 and accepted.json()["remaining"] == 0


async def _counters_rebuilt_while_catching_up(omni: Omni) -> None:
    """The hot counters dropped and built again from the views while the runner's catch-up is held
    back, so the meters defined last are still behind their partitions' checkpoints then."""
    from unittest.mock import AsyncMock, patch

    from streams.embedded_quotas import BUILT, EmbeddedQuotaLedger
    from streams.redis_quotas import RedisQuotaLedger

    ledger = omni.platform.quotas
    with patch.object(omni.platform.runner, "catch_up", AsyncMock(return_value=0)):
        if isinstance(ledger, EmbeddedQuotaLedger):  # built once the views hold the whole log
            ledger.log.run_locked(lambda db: db.execute("DELETE FROM quota_ledger WHERE name=?", (BUILT,)))
            assert await ledger.ensure_built(omni.settle, omni.platform.db, datetime.now(UTC))
        else:
            assert isinstance(ledger, RedisQuotaLedger)
            await ledger.redis.delete(ledger.keys.built)  # from the views and the log past their checkpoints
            assert await ledger.rebuild()


async def test_counters_rebuilt_while_a_meter_catches_up_count_its_history_once(omni: Omni) -> None:
    """A rebuild finds "shadow" still catching up: its views hold nothing yet. Its catch-up then
    counts everything below the log's end at the rebuild (facts, the other meter's consume, and its
    own consume decided before the rebuild) and from there only facts (what consume counted as it
    decided): its quota ends up at what its meter says, nothing lost, nothing twice."""
    tenant_id, key = await omni.tenant()
    await omni.meter(**TOKENS)
    await omni.settle()
    facts = await omni.send(key, [cloud_event(f"fact-{i}", type_="inference", data={"tokens": 50}) for i in range(2)])
    assert facts.status_code == 202, facts.text
    await omni.settle()
    assert (await consume(omni, key, "tokens", 30)).status_code == 200, "the other meter's consume: a fact to shadow"
    await omni.meter(**{**TOKENS, "slug": "shadow"})
    with_shadow = {"meter": "shadow", "limit": 10_000, "period": "DAY"}
    from unittest.mock import AsyncMock, patch

    with patch.object(omni.platform.runner, "catch_up", AsyncMock(return_value=0)):
        await put_plan(omni, "both", {"meter": "tokens", "limit": 10_000, "period": "DAY"}, with_shadow, status=201)
        await on_plan(omni, tenant_id, "both")
        await omni.settle()
        # Its catch-up begun: one record folded, so its own offset is past zero when the rebuild reads it.
        meters, lag = await fold_the_first_record_of_its_catch_up(omni)
        for amount in (20, 7):
            assert (await consume(omni, key, "shadow", amount)).status_code == 200, "decided before the rebuild, not yet folded"
        await _counters_rebuilt_while_catching_up(omni)
        rebuilds = REGISTRY.get_sample_value("omni_quota_ledger_rebuilds_total")
        assert (await consume(omni, key, "shadow", 5)).status_code == 200, "decided after it"
    # One record of what the views have not folded is folded (shadow still behind), then the catch-up
    # reaches that point, so shadow goes live with the rest of the rebuild's tail still to fold.
    with omni.platform.db.transaction() as tx:
        head = views.checkpoints(tx, METERS, meters.topic).get(lag.partition, 0)
    await asyncio.to_thread(meters.process, lag.partition, await omni.platform.log.read(meters.topic, lag.partition, head, 1))
    while await omni.platform.runner.catch_up():
        pass
    await omni.settle()
    total = sum(row["value"] for row in await omni.query(key, "shadow"))
    assert total == 100 + 30 + 20 + 7 + 5
    assert (await quota(omni, key, "shadow"))["used"] == total
    after = await consume(omni, key, "shadow", 1)
    assert after.status_code == 200 and after.json()["used"] == total + 1, after.text
    assert REGISTRY.get_sample_value("omni_quota_ledger_rebuilds_total") == rebuilds, (
        "the catch-up went on from where the rebuild found it, with no second rebuild"
    )
    assert (await quota(omni, key, "tokens"))["used"] == sum(row["value"] for row in await omni.query(key, "tokens"))


async def fold_the_first_record_of_its_catch_up(omni: Omni) -> tuple[Any, Any]:
    """The one meter lagging (the runner's own catch-up patched out) folds the first record of its
    catch-up; the meters' projector and that lag."""
    meters = omni.platform.runner.meters
    (lag,) = await asyncio.to_thread(meters.lagging)
    first = await omni.platform.log.read(meters.topic, lag.partition, lag.start, 1)
    assert await asyncio.to_thread(meters.catch_up, lag, first) == 1
    return meters, lag


async def start_the_counters(omni: Omni) -> None:
    """What the API's start does with the hot counters: build them unless they are built, by this
    version, from the current views."""
    from streams.embedded_quotas import EmbeddedQuotaLedger
    from streams.redis_quotas import RedisQuotaLedger

    ledger = omni.platform.quotas
    if isinstance(ledger, EmbeddedQuotaLedger):
        assert await ledger.ensure_built(omni.settle, omni.platform.db, datetime.now(UTC))
    else:
        assert isinstance(ledger, RedisQuotaLedger)
        await asyncio.wait_for(ledger._keep_built(), timeout=60)


async def test_counters_built_by_an_older_version_are_built_again_once(omni: Omni) -> None:
    """Counters of an older format (older versions left out the history of meters defined after
    their events) are built again from the views at the start, once: a counter gone wrong is right
    after it, and a second start builds nothing."""
    from projections.quotas import period_of
    from schemas.plans import Period
    from streams.embedded_quotas import FORMAT_ROW, EmbeddedQuotaLedger
    from streams.redis_quotas import RedisQuotaLedger, field

    tenant_id, key = await on_a_tokens_plan(omni, 1000, "DAY")
    assert (await consume(omni, key, "tokens", 10)).status_code == 200
    await omni.settle()
    ledger = omni.platform.quotas
    period = period_of(datetime.now(UTC), Period.DAY)

    if isinstance(ledger, EmbeddedQuotaLedger):
        ledger.log.run_locked(lambda db: db.execute("DELETE FROM quota_ledger WHERE name=?", (FORMAT_ROW,)))
        ledger.log.run_locked(lambda db: db.execute("UPDATE quota_counters SET used='0'"))
    else:
        assert isinstance(ledger, RedisQuotaLedger)
        epoch = (await ledger.redis.get(ledger.keys.built)).decode()
        await ledger.redis.hset(ledger.keys.counters(epoch, tenant_id), field("tokens", period), 0)
        await ledger.redis.set(ledger.keys.format, "1")
    assert await ledger.used(tenant_id, "tokens", period) == 0, "as an older version left it"
    before = REGISTRY.get_sample_value("omni_quota_ledger_rebuilds_total")
    await start_the_counters(omni)
    assert await ledger.used(tenant_id, "tokens", period) == 10
    assert REGISTRY.get_sample_value("omni_quota_ledger_rebuilds_total") == (before or 0) + 1
    await start_the_counters(omni)
    assert REGISTRY.get_sample_value("omni_quota_ledger_rebuilds_total") == (before or 0) + 1, "once"
