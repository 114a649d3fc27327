"""One tenant's meter queries never take the views' connections from other tenants (api/tenant_reads.py).

Kafka mode: the API's views pool holds 8 PostgreSQL connections. A tenant's heavy queries (held
here by a 1.5 s statement in the query's own transaction, as a query over tens of thousands of
buckets takes) used to run as many at once as it sent: ten of them took every connection, and
another tenant's reads waited past the pool's wait and were answered 503."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

import api.routes.meters as meters_route
from api.routes.meters import meter_answer
from omni.bootstrap import Platform
from tests.e2e.conftest import kafka_settings, served, services_or_skip


async def test_one_tenants_heavy_queries_leave_other_tenants_their_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    services_or_skip()
    settings = kafka_settings(
        uuid.uuid4().hex[:12], database_wait_seconds=1.0, max_queries_per_tenant=2, max_queries_waiting_per_tenant=3
    )
    async with served(settings) as omni:
        await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
        heavy_id, heavy_key = await omni.tenant("heavy")
        _, other_key = await omni.tenant("other")
        await omni.settle()
        reads = omni.app.state.tenant_reads
        all_came = threading.Event()  # each of the ten heavy queries started, waits or was refused
        running: list[int] = []

        def slow_for_heavy(platform: Platform, tenant_id: str, question: Any) -> dict[str, Any]:
            if tenant_id == heavy_id:
                running.append(reads.running(heavy_id))
                with platform.db.reading() as tx:  # a views connection held as a heavy query holds it
                    all_came.wait(20)
                    tx.execute("SELECT pg_sleep(1.5)")
            return meter_answer(platform, tenant_id, question)

        monkeypatch.setattr(meters_route, "meter_answer", slow_for_heavy)
        answered: list[int] = []

        async def heavy_query() -> int:
            response = await omni.client.get("/v1/meters/tokens/query", headers=omni.auth(heavy_key), timeout=30)
            assert response.status_code in (200, 429), response.text
            if response.status_code == 429:
                assert response.json()["type"].endswith("/too-many-queries") and response.headers["retry-after"] == "1"
            answered.append(response.status_code)
            return response.status_code

        async def other_reads() -> list[int]:
            # Once the heavy tenant's ten came (two running, three waiting, five refused), while its
            # two hold their connections:
            deadline = asyncio.get_running_loop().time() + 10  # without turns the ten never settle so
            while not (answered.count(429) == 5 and (turns := reads._turns.get(heavy_id)) and turns.holders == 5):
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.01)
            all_came.set()
            answers = []
            for path in ("/v1/quotas", "/v1/meters/tokens", "/v1/meters/tokens/query", "/v1/notifications"):
                response = await omni.client.get(path, headers=omni.auth(other_key), timeout=30)
                answers.append(response.status_code)
            return answers

        async with asyncio.timeout(60):
            *heavy, other = await asyncio.gather(*(heavy_query() for _ in range(10)), other_reads())
        assert other == [200, 200, 200, 200]  # 503 "database unreachable" for each, before
        # Two run at once, three more wait their turn: the other five are refused at once, 429.
        assert sorted(heavy) == [200] * 5 + [429] * 5
        assert max(running) <= 2 and len(running) == 5
        assert omni.app.state.tenant_reads.running(heavy_id) == 0  # every turn given back


async def test_reads_as_of_an_instant_take_the_callers_turns(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each folds the log into a store of its own (api/as_of.py): 45 at once held every thread and
    connection of the API, and other tenants waited 30 s. Here a tenant runs one at a time and none
    waits: its second is refused, while another tenant's runs."""
    import contextlib
    import threading
    from collections.abc import Iterator

    import api.as_of
    from tests.e2e.conftest import embedded_settings

    real = api.as_of.catalog_as_of
    release = threading.Event()
    folding = [0]

    @contextlib.contextmanager
    def held(platform: Platform, moment: Any) -> Iterator[Any]:
        folding[0] += 1
        release.wait(20)
        with real(platform, moment) as past:
            yield past

    monkeypatch.setattr(api.as_of, "catalog_as_of", held)
    settings = embedded_settings(tmp_path / "data", max_queries_per_tenant=1, max_queries_waiting_per_tenant=0)
    async with served(settings) as omni:
        _, a_key = await omni.tenant("a")
        _, b_key = await omni.tenant("b")
        await omni.settle()
        moment = {"as_of": datetime.now(UTC).isoformat()}

        async def read(key: str, path: str) -> int:
            return (await omni.client.get(path, params=moment, headers=omni.auth(key), timeout=30)).status_code

        try:
            first = asyncio.create_task(read(a_key, "/v1/invoices"))
            async with asyncio.timeout(20):
                while folding[0] < 1:
                    assert not first.done(), first.result()
                    await asyncio.sleep(0.01)
            assert await read(a_key, "/v1/quotas") == 429  # a's one turn is taken
            assert await read(a_key, "/v1/invoices/00000000-0000-0000-0000-000000000000") == 429
            other = asyncio.create_task(read(b_key, "/v1/quotas"))
            async with asyncio.timeout(20):
                while folding[0] < 2:  # b's started beside a's
                    assert not other.done(), other.result()
                    await asyncio.sleep(0.01)
            release.set()
        finally:
            release.set()  # a failing assertion leaves no thread held
        assert await first == 200 and await other == 200
