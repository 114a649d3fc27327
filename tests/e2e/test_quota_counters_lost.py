"""Kafka mode's quota counters are a cache of the log: lost mid-storm (FLUSHALL), they are rebuilt
from the views and the log, and enforcement stays exact."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni, kafka_settings, served, services_or_skip

LIMIT = 1000
AMOUNT = 7


@pytest.fixture
async def kafka_omni() -> AsyncIterator[Omni]:
    services_or_skip()
    # A Redis database of its own: the test empties it (FLUSHDB, all Omni's keys lost at once), and
    # tests running beside it keep theirs.
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:16379/0").rsplit("/", 1)[0] + "/15"
    async with served(kafka_settings(uuid.uuid4().hex[:12], redis_url=redis_url), timeout=60) as running:
        yield running


async def test_flushall_mid_storm_loses_nothing_and_passes_no_limit(kafka_omni: Omni) -> None:
    omni = kafka_omni
    await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
    await omni.client.put(
        "/v1/plans/pro",
        json={"entitlements": [{"meter": "tokens", "limit": LIMIT, "period": "MONTH"}]},
        headers=omni.auth(ADMIN),
    )
    _, key = await omni.tenant()
    await omni.settle()
    # Facts folded before the storm: the rebuild must take them from the views.
    facts = await omni.send(key, [cloud_event(f"fact-{i}", data={"tokens": 50}) for i in range(4)])
    assert facts.status_code == 202
    await omni.settle()

    rebuilds = REGISTRY.get_sample_value("omni_quota_ledger_rebuilds_total") or 0.0
    statuses: list[int] = []
    flushed = asyncio.Event()

    async def consumer(n: int) -> None:
        for i in range(6):
            response = await omni.client.post(
                "/v1/quotas/tokens/consume",
                json={"amount": AMOUNT, "idempotency_key": f"c{n}-{i}"},
                headers=omni.auth(key),
            )
            statuses.append(response.status_code)
            if n == 0 and i == 2:
                redis = aioredis.from_url(omni.platform.settings.redis_url)
                await redis.flushdb()
                await redis.aclose()
                flushed.set()

    await asyncio.gather(*(consumer(n) for n in range(50)))
    assert flushed.is_set()
    assert (REGISTRY.get_sample_value("omni_quota_ledger_rebuilds_total") or 0.0) > rebuilds, "the counters were rebuilt"
    assert set(statuses) <= {200, 429, 503}, statuses
    accepted = statuses.count(200)
    # 300 consumes of 7 asked for 2,100 on top of the 200 the facts used: demand passed the limit.
    assert 200 + accepted * AMOUNT <= LIMIT
    assert 200 + (accepted + 1) * AMOUNT > LIMIT, "the limit is reached exactly: no room for one more"

    await omni.settle()
    rows = await omni.query(key, "tokens")
    assert sum(row["value"] for row in rows) == 200 + accepted * AMOUNT, "the log holds exactly what was accepted"
    quota = (await omni.client.get("/v1/quotas/tokens", headers=omni.auth(key))).json()
    assert quota["used"] == 200 + accepted * AMOUNT


async def test_a_fact_past_any_counter_fails_no_other_tenants_consume_nor_a_rebuild(kafka_omni: Omni) -> None:
    """One tenant's fact far past 64 bits (10^20 tokens, which admission takes) used to overflow the
    counters' fold and every rebuild after it: every tenant's consume then waited and answered 503.
    The counters saturate now, the rebuild after a FLUSHDB included."""
    omni = kafka_omni
    await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
    plan = {"entitlements": [{"meter": "tokens", "limit": LIMIT, "period": "MONTH"}]}
    assert (await omni.client.put("/v1/plans/pro", json=plan, headers=omni.auth(ADMIN))).status_code == 201
    (_, hostile), (_, other) = await omni.tenant("hostile"), await omni.tenant("other")
    await omni.settle()
    assert (await omni.send(hostile, [cloud_event("huge", data={"tokens": 1e20})])).status_code == 202
    await omni.settle()

    async def consume(key: str, name: str) -> int:
        body = {"amount": AMOUNT, "idempotency_key": name}
        return (await omni.client.post("/v1/quotas/tokens/consume", json=body, headers=omni.auth(key))).status_code

    assert await consume(other, "before") == 200
    assert await consume(hostile, "hostile-before") == 429
    redis = aioredis.from_url(omni.platform.settings.redis_url)
    await redis.flushdb()  # rebuilt from the views, the huge total among them
    await redis.aclose()
    assert await consume(other, "after") == 200
    assert await consume(hostile, "hostile-after") == 429
    used = await omni.client.get("/v1/quotas/tokens", headers=omni.auth(other))
    assert used.json()["used"] == 2 * AMOUNT, used.text
