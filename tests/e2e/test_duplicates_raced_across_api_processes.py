"""Kafka mode: the same events sent at once to two API processes are accepted once in all.

Two platforms built on the same settings (the same Kafka topics, Redis and PostgreSQL schema)
stand for two API processes behind a load balancer. A client retrying through both sends the
same ids to each, concurrently: across every answer each id is 'accepted' exactly once, and the
meters count each event once.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import orjson
import pytest

from api.app import create_app
from omni.bootstrap import Platform, build
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH, SINGLE, drop_kafka_state, kafka_settings, services_or_skip

IDS = [f"evt-{n}" for n in range(40)]
EVENTS = {event_id: cloud_event(event_id, type_="call", data={"tokens": n + 1}) for n, event_id in enumerate(IDS)}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def two_processes() -> AsyncIterator[tuple[tuple[Platform, httpx.AsyncClient], tuple[Platform, httpx.AsyncClient]]]:
    services_or_skip()
    settings = kafka_settings(uuid.uuid4().hex[:12])
    first, second = build(settings), build(settings)
    apps = [create_app(platform=p, background=False) for p in (first, second)]
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[0]), base_url="http://a.test") as a,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[1]), base_url="http://b.test") as b,
        ):
            yield (first, a), (second, b)
    await drop_kafka_state(settings)


async def test_the_same_ids_raced_through_two_api_processes_are_accepted_once_and_counted_once(
    two_processes: tuple[tuple[Platform, httpx.AsyncClient], tuple[Platform, httpx.AsyncClient]],
) -> None:
    (first, a), (_, b) = two_processes
    created = await a.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=auth(ADMIN))
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    for meter in (
        {"slug": "calls", "event_type": "call", "aggregation": "COUNT"},
        {"slug": "tokens", "event_type": "call", "aggregation": "SUM", "value_property": "$.data.tokens"},
    ):
        assert (await b.post("/v1/meters", json=meter, headers=auth(ADMIN))).status_code == 201
    await first.settle()

    shuffler = random.Random(18)

    def batch(client: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
        ids = shuffler.sample(IDS, len(IDS))
        body = orjson.dumps([EVENTS[i] for i in ids])
        return asyncio.ensure_future(client.post("/v1/events", content=body, headers={**auth(key), "Content-Type": BATCH}))

    def single(client: httpx.AsyncClient, event_id: str) -> asyncio.Task[httpx.Response]:
        body = orjson.dumps(EVENTS[event_id])
        return asyncio.ensure_future(client.post("/v1/events", content=body, headers={**auth(key), "Content-Type": SINGLE}))

    # Each process gets three whole batches (each in its own order) and a single copy of every
    # fifth id, all in flight at once.
    requests = [batch(client) for _ in range(3) for client in (a, b)]
    requests += [single(client, event_id) for event_id in IDS[::5] for client in (a, b)]
    answers = await asyncio.gather(*requests)

    assert [r.status_code for r in answers] == [202] * len(answers), [r.text for r in answers if r.status_code != 202]
    statuses: dict[str, Counter[str]] = {event_id: Counter() for event_id in IDS}
    for answer in answers:
        body = answer.json()
        assert body["accepted"] + body["duplicates"] == len(body["results"])
        for result in body["results"]:
            statuses[result["id"]][result["status"]] += 1
    copies = {event_id: 6 + (2 if event_id in IDS[::5] else 0) for event_id in IDS}
    assert {i: dict(s) for i, s in statuses.items()} == {i: {"accepted": 1, "duplicate": copies[i] - 1} for i in IDS}
    assert sum(r.json()["accepted"] for r in answers) == len(IDS)

    await first.settle()
    for meter, expected in (("calls", len(IDS)), ("tokens", sum(range(1, len(IDS) + 1)))):
        response = await b.get(f"/v1/meters/{meter}/query", headers=auth(key))
        assert response.status_code == 200, response.text
        rows = orjson.loads(response.content)["data"]
        assert sum(Decimal(str(row["value"])) for row in rows) == expected, (meter, rows)
