"""Suspending a tenant over the API, in both modes: its consumes refused (403) and counted nowhere
until it is resumed, its kept answers given again, its facts still counted, other tenants untouched;
each change an audit entry and a notification (and a webhook delivery) to the tenant."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_plans_and_quotas import TOKENS, consume, on_plan, put_plan, quota
from tests.e2e.test_webhooks import endpoint, receivers, running
from tests.webhook_receiver import Receiver, verified


async def suspend(omni: Omni, tenant_id: str, reason: str = "invoice 2026-11 unpaid", key: str = ADMIN) -> Any:
    response = await omni.client.post(f"/v1/tenants/{tenant_id}/suspend", json={"reason": reason}, headers=omni.auth(key))
    await omni.settle()
    return response


async def resume(omni: Omni, tenant_id: str, key: str = ADMIN) -> Any:
    response = await omni.client.post(f"/v1/tenants/{tenant_id}/resume", headers=omni.auth(key))
    await omni.settle()
    return response


async def notifications(omni: Omni, key: str) -> list[dict[str, Any]]:
    response = await omni.client.get("/v1/notifications", headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return [n for n in response.json()["data"] if n["type"].startswith("omni.tenant.")]


async def two_tenants_on_a_plan(omni: Omni) -> tuple[tuple[str, str], tuple[str, str]]:
    await omni.meter(**TOKENS)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 1000, "period": "DAY"}, status=201)
    a, b = await omni.tenant("a"), await omni.tenant("b")
    for tenant_id, _ in (a, b):
        await on_plan(omni, tenant_id, "pro")
    return a, b


async def test_a_refusal_of_a_period_that_has_ended_is_no_answer_to_a_suspended_tenant(omni: Omni) -> None:
    """A kept refusal is an answer within its period only (README, Quotas): past it, a suspended
    tenant's retry got the old 429 with `Retry-After: 1` again and again, where 403 is the answer."""
    await omni.meter(**TOKENS)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 10, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant("late")
    await on_plan(omni, tenant_id, "pro")
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    omni.platform.clock = lambda: midnight - timedelta(microseconds=1)
    assert (await consume(omni, key, "tokens", 11, "big")).status_code == 429
    assert (await suspend(omni, tenant_id)).status_code == 200
    assert (await consume(omni, key, "tokens", 11, "big")).status_code == 429, "within its day, the kept refusal"
    omni.platform.clock = lambda: midnight
    late = await consume(omni, key, "tokens", 11, "big")
    assert late.status_code == 403 and late.json()["type"].endswith("tenant-suspended"), late.text


async def test_a_suspended_tenant_consumes_nothing_until_it_is_resumed(omni: Omni) -> None:
    (a_id, a_key), (_, b_key) = await two_tenants_on_a_plan(omni)
    first = await consume(omni, a_key, "tokens", 10, "before")
    assert first.status_code == 200, first.text

    suspended = await suspend(omni, a_id)
    assert suspended.status_code == 200, suspended.text
    body = suspended.json()
    assert body["status"] == "suspended" and body["suspension_reason"] == "invoice 2026-11 unpaid"
    assert body["suspended_at"].endswith("Z")
    seen = await omni.client.get(f"/v1/tenants/{a_id}", headers=omni.auth(a_key))
    assert seen.status_code == 200 and seen.json() == body, "the tenant sees its own status"

    refused = await consume(omni, a_key, "tokens", 5, "during")
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"].endswith("tenant-suspended") and problem["status"] == 403
    assert problem["reason"] == "invoice 2026-11 unpaid" and problem["suspended_at"] == body["suspended_at"]
    assert "retry-after" not in refused.headers
    assert (await consume(omni, b_key, "tokens", 5)).status_code == 200, "another tenant is not suspended"

    again = await consume(omni, a_key, "tokens", 10, "before")
    assert again.status_code == 200 and again.json() == first.json(), "a kept answer is given again"
    conflict = await consume(omni, a_key, "tokens", 11, "before")
    assert conflict.status_code == 409, "a kept key reused for another request is still a conflict"

    read = await quota(omni, a_key, "tokens")
    assert read["used"] == 10 and read["has_access"] is False, read
    assert (await quota(omni, b_key, "tokens"))["has_access"] is True

    fact = cloud_event("fact-1", data={"tokens": 7})
    accepted = await omni.send(a_key, [fact])
    assert accepted.status_code == 202 and accepted.json()["accepted"] == 1, "facts are still counted"
    await omni.settle()
    assert (await quota(omni, a_key, "tokens"))["used"] == 17

    # Refused before anything is made for it: no data key for a person it names (a data class seals
    # the prompt), so a suspended tenant cannot grow the key store by consuming for new subjects.
    declared = await omni.client.put("/v1/data-classes/inference", json={"personal": ["$.data.prompt"]}, headers=omni.auth(ADMIN))
    assert declared.status_code == 201, declared.text
    await omni.settle()
    newcomer = await consume(omni, a_key, "tokens", 5, "newcomer", subject="newcomer", data={"prompt": "hello"})
    assert newcomer.status_code == 403, newcomer.text
    assert omni.platform.personal.keys_for(a_id, {"newcomer"}, create=False) == {}
    resumed = await resume(omni, a_id)
    assert resumed.status_code == 200, resumed.text
    assert {k: resumed.json()[k] for k in ("status", "suspended_at", "suspension_reason")} == {
        "status": "active",
        "suspended_at": None,
        "suspension_reason": None,
    }
    after = await consume(omni, a_key, "tokens", 5, "during", subject="user-1")
    assert after.status_code == 200 and after.json()["used"] == 22, "the refused key counted nothing and is decided now"

    told = await notifications(omni, a_key)
    assert [(n["type"], n["reason"]) for n in told] == [
        ("omni.tenant.resumed", None),
        ("omni.tenant.suspended", "invoice 2026-11 unpaid"),
    ]
    assert told[1]["occurred_at"] == body["suspended_at"] and {n["tenant_id"] for n in told} == {a_id}
    assert await notifications(omni, b_key) == []

    chain = await omni.client.get("/v1/audit", params={"action": "tenant.suspend"}, headers=omni.auth(a_key))
    assert [(e["action"], e["outcome"]) for e in chain.json()["data"]] == [("tenant.suspend", "accepted")]


async def test_suspension_is_the_admins_and_changes_nothing_twice(omni: Omni) -> None:
    (a_id, a_key), (b_id, _) = await two_tenants_on_a_plan(omni)
    assert (await suspend(omni, a_id, key=a_key)).status_code == 403, "a tenant cannot suspend (itself or anyone)"
    assert (await resume(omni, a_id, key=a_key)).status_code == 403
    missing = await suspend(omni, str(uuid.uuid4()))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    for bad in ({}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 501}, {"reason": 5}, {"reason": "ok", "extra": 1}):
        response = await omni.client.post(f"/v1/tenants/{a_id}/suspend", json=bad, headers=omni.auth(ADMIN))
        assert response.status_code == 422, (bad, response.text)

    first = (await suspend(omni, a_id, "first")).json()
    second = (await suspend(omni, a_id, "second")).json()
    assert second == first, "suspending a suspended tenant changes nothing"
    assert (await resume(omni, b_id)).json()["status"] == "active", "resuming an active tenant changes nothing"
    assert [n["reason"] for n in await notifications(omni, a_key)] == ["first"]
    assert await notifications(omni, (await omni.tenant("c"))[1]) == []

    listed = await omni.client.get("/v1/tenants", params={"status": "suspended"}, headers=omni.auth(ADMIN))
    assert [t["id"] for t in listed.json()["data"]] == [a_id]
    active = await omni.client.get("/v1/tenants", params={"status": "active"}, headers=omni.auth(ADMIN))
    assert a_id not in [t["id"] for t in active.json()["data"]] and b_id in [t["id"] for t in active.json()["data"]]
    everyone = (await omni.client.get("/v1/tenants", headers=omni.auth(ADMIN))).json()["data"]
    assert {t["id"]: t["status"] for t in everyone}[a_id] == "suspended"
    wrong = await omni.client.get("/v1/tenants", params={"status": "closed"}, headers=omni.auth(ADMIN))
    assert wrong.status_code == 422
    for cursor in ("x", a_id.upper(), f"{a_id}~1"):  # a page's next_after is a tenant's id as listed
        refused = await omni.client.get("/v1/tenants", params={"after": cursor}, headers=omni.auth(ADMIN))
        assert refused.status_code == 422 and refused.json()["type"].endswith("/invalid-cursor"), refused.text
    paged = await omni.client.get("/v1/tenants", params={"after": a_id, "limit": 1000}, headers=omni.auth(ADMIN))
    assert all(t["id"] > a_id for t in paged.json()["data"])

    # The catalog rebuilt from the log holds the same changes (the views' rows are the events' alone).
    assert (await resume(omni, a_id)).status_code == 200 and (await suspend(omni, a_id, "third")).status_code == 200
    started = await omni.client.post("/v1/admin/replays", json={"projections": ["catalog"]}, headers=omni.auth(ADMIN))
    assert started.status_code == 202, started.text
    job = started.json()
    deadline = time.monotonic() + 30
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.02)  # the job runs on this event loop
        job = (await omni.client.get(f"/v1/admin/replays/{job['id']}", headers=omni.auth(ADMIN))).json()
    assert (job["state"], job["differences"]) == ("done", 0), job
    with omni.platform.db.transaction() as tx:
        assert tx.execute("SELECT COUNT(*) FROM tenant_status_changes WHERE tenant_id=?", (a_id,))[0][0] == 3

    audited = await omni.client.get("/v1/audit", params={"action": "tenant.suspend"}, headers=omni.auth(a_key))
    # The tenant's own refused attempt, then the suspensions (the second changed nothing, and is
    # recorded all the same, saying so); the admin's refusals are in the platform's chain.
    entries = audited.json()["data"]
    assert [e["outcome"] for e in entries] == ["rejected", "accepted", "accepted", "accepted"]
    assert [e["reason"] for e in entries[1:]][0::2] == ["first", "third"] and "already suspended" in entries[2]["reason"]
    platform = await omni.client.get("/v1/audit", params={"action": "tenant.suspend"}, headers=omni.auth(ADMIN))
    assert [e["outcome"] for e in platform.json()["data"]] == ["rejected"] * 7


async def test_the_tenants_endpoints_are_told_signed(tmp_path: Path) -> None:
    async with running(tmp_path) as omni, receivers(Receiver()) as (hook,):
        tenant_id, key = await omni.tenant("a")
        made = await endpoint(omni, key, hook.url)
        assert (await suspend(omni, tenant_id, "fraud review")).status_code == 200
        assert (await resume(omni, tenant_id)).status_code == 200
        await hook.wait_for(2)
        told = await notifications(omni, key)
        payloads = [verified(made["secret"], delivery) for delivery in hook.received]
        assert [p["type"] for p in payloads] == ["omni.tenant.suspended", "omni.tenant.resumed"]
        assert [p["data"] for p in payloads] == list(reversed(told)), "the delivery is the notification"
        assert [d.id for d in hook.received] == [n["id"] for n in reversed(told)]
