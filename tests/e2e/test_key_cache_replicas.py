"""Kafka mode: API replicas share one event store, and each keeps verified keys in memory.

A key revoked through one replica must stop working on the others at once, not
when their cached answer ages out: PostgreSQL notifies every replica of each
commit to the store. Two platforms on one schema stand for two API processes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import psycopg
import pytest

from api.app import create_app
from omni.bootstrap import Platform, build
from stores.store_listener import application_name
from tests.contract.conftest import DATABASE_URL
from tests.e2e.conftest import ADMIN, drop_kafka_state, kafka_settings, services_or_skip

Replica = tuple[Platform, httpx.AsyncClient]


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until `condition` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[Replica, Replica]]:
    services_or_skip()
    settings = kafka_settings(uuid.uuid4().hex[:12])
    first, second = build(settings), build(settings)
    apps = [create_app(platform=p, background=False) for p in (first, second)]
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[0]), base_url="http://a.test") as a,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[1]), base_url="http://b.test") as b,
        ):
            await eventually(lambda: first.keys.trusted and second.keys.trusted)
            yield (first, a), (second, b)
    await drop_kafka_state(settings)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_key_revoked_on_one_replica_stops_working_on_the_other(replicas: tuple[Replica, Replica]) -> None:
    (_, a), (second, b) = replicas
    created = (await a.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=auth(ADMIN))).json()
    key = created["api_key"]
    assert (await b.get("/v1/meters", headers=auth(key))).status_code == 200
    assert second.cached_principal(key) is not None, "the second replica keeps the key it verified"

    assert (await a.delete(f"/v1/keys/{key.split('_')[1]}", headers=auth(ADMIN))).status_code == 204
    waited = await eventually(lambda: second.cached_principal(key) is None, timeout=2.0)
    assert (await b.get("/v1/meters", headers=auth(key))).status_code == 401
    assert waited < 1.0, f"the second replica forgot the revoked key only after {waited:.2f}s"


async def test_a_replica_that_cannot_hear_the_store_keeps_nothing_until_it_hears_again(
    replicas: tuple[Replica, Replica],
) -> None:
    (_, a), (second, b) = replicas
    created = (await a.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=auth(ADMIN))).json()
    key = created["api_key"]
    assert (await b.get("/v1/meters", headers=auth(key))).status_code == 200
    assert len(second.keys) == 1

    # Only this deployment's listeners (its event store's channel): the suite's other tests, running
    # beside it on the same server, keep theirs (cutting them all made another test's key cache miss).
    name = application_name(second.control.recorder.channel_name)  # type: ignore[attr-defined]
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        cut = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall()
    assert cut, "no listener connection to cut"
    # Whatever it kept may have gone stale while it was deaf: it goes, whether or not it reconnected yet.
    await eventually(lambda: len(second.keys) == 0)
    assert (await b.get("/v1/meters", headers=auth(key))).status_code == 200, "read from the store"
    await eventually(lambda: second.keys.trusted)
    assert (await b.get("/v1/meters", headers=auth(key))).status_code == 200
    assert len(second.keys) == 1, "listening again, it keeps keys again"


async def test_a_plan_changed_on_one_replica_limits_consumes_on_the_other_at_once(replicas: tuple[Replica, Replica]) -> None:
    """Consume keeps the tenant's quotas in memory (omni/catalog_cache.py): a plan change through
    another replica must reach it as soon as the views hold the change, not when a cache ages out."""
    (first, a), (_, b) = replicas
    meter = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
    assert (await a.post("/v1/meters", json=meter, headers=auth(ADMIN))).status_code == 201
    plan = {"entitlements": [{"meter": "tokens", "limit": 10, "period": "DAY"}]}
    assert (await a.put("/v1/plans/pro", json=plan, headers=auth(ADMIN))).status_code == 201
    created = (await a.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=auth(ADMIN))).json()
    await first.settle()
    key = created["api_key"]

    async def consume(amount: int, name: str) -> int:
        body = {"amount": amount, "idempotency_key": name}
        return (await b.post("/v1/quotas/tokens/consume", json=body, headers=auth(key))).status_code

    assert await consume(5, "first") == 200  # b now keeps the tenant's quotas
    assert await consume(1, "second") == 200
    lowered = {"entitlements": [{"meter": "tokens", "limit": 7, "period": "DAY"}]}
    assert (await a.put("/v1/plans/pro", json=lowered, headers=auth(ADMIN))).status_code == 200
    await first.settle()  # the views hold the new version: what a command's answer waits for
    assert await consume(2, "third") == 429, "b served the plan it kept: 6 + 2 passes the new limit of 7"
    assert await consume(1, "fourth") == 200


async def test_a_key_its_tenant_revoked_on_one_replica_consumes_and_ingests_nothing_on_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    """The hot routes read the same key cache: once the other replica heard the revocation, its
    consume and ingest refuse the key (401), and nothing the key sent after it is counted."""
    (first, a), (second, b) = replicas
    meter = {"slug": "calls", "event_type": "call", "aggregation": "COUNT"}
    assert (await a.post("/v1/meters", json=meter, headers=auth(ADMIN))).status_code == 201
    plan = {"entitlements": [{"meter": "calls", "limit": 10, "period": "DAY"}]}
    assert (await a.put("/v1/plans/pro", json=plan, headers=auth(ADMIN))).status_code == 201
    created = (await a.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=auth(ADMIN))).json()
    await first.settle()
    key = created["api_key"]
    body = {"amount": 1, "idempotency_key": "before"}
    assert (await b.post("/v1/quotas/calls/consume", json=body, headers=auth(key))).status_code == 200

    assert (await a.delete(f"/v1/keys/{key.split('_')[1]}", headers=auth(key))).status_code == 204
    await eventually(lambda: second.cached_principal(key) is None, timeout=2.0)
    after = await b.post("/v1/quotas/calls/consume", json=body | {"idempotency_key": "after"}, headers=auth(key))
    assert after.status_code == 401, after.text
    event = {"specversion": "1.0", "id": "e", "source": "s", "type": "call", "subject": "u"}
    sent = await b.post("/v1/events", json=event, headers={**auth(key), "Content-Type": "application/cloudevents+json"})
    assert sent.status_code == 401, sent.text
    quota = await b.get("/v1/quotas/calls", params={"tenant": created["id"]}, headers=auth(ADMIN))
    assert quota.status_code == 200 and quota.json()["used"] == 1, quota.text


async def test_a_tenant_suspended_on_one_replica_consumes_nothing_on_the_other_at_once(
    replicas: tuple[Replica, Replica],
) -> None:
    """The other replica keeps the tenant's quotas and status in memory: once the views hold the
    suspension (what its answer waits for) its consumes are refused, and decided again once resumed."""
    (first, a), (_, b) = replicas
    meter = {"slug": "calls", "event_type": "call", "aggregation": "COUNT"}
    assert (await a.post("/v1/meters", json=meter, headers=auth(ADMIN))).status_code == 201
    created = (await a.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=auth(ADMIN))).json()
    await first.settle()
    key, tenant_id = created["api_key"], created["id"]

    async def consume(name: str) -> int:
        body = {"amount": 1, "idempotency_key": name}
        return (await b.post("/v1/quotas/calls/consume", json=body, headers=auth(key))).status_code

    assert await consume("first") == 200  # b now keeps the tenant's catalog entry
    suspended = await a.post(f"/v1/tenants/{tenant_id}/suspend", json={"reason": "unpaid"}, headers=auth(ADMIN))
    assert suspended.status_code == 200, suspended.text
    await first.settle()  # the views hold the suspension: what its answer waits for
    assert await consume("second") == 403, "b served the status it kept"
    assert (await a.post(f"/v1/tenants/{tenant_id}/resume", headers=auth(ADMIN))).status_code == 200
    await first.settle()
    assert await consume("second") == 200
