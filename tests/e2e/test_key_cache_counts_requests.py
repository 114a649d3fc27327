"""omni_key_cache_total over HTTP, in each mode: every request with a tenant's key looks the key up
in memory once, a hit or a miss; the admin's key and requests without a key are no lookups."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from tests.e2e.conftest import ADMIN, Omni


def lookups() -> dict[str, float]:
    return {
        outcome: REGISTRY.get_sample_value("omni_key_cache_total", {"outcome": outcome}) or 0.0 for outcome in ("hit", "miss")
    }


def counted_since(before: dict[str, float]) -> dict[str, float]:
    return {outcome: total - before[outcome] for outcome, total in lookups().items()}


async def test_each_request_with_a_key_counts_one_hit_or_miss(omni: Omni) -> None:
    deadline = time.monotonic() + 10
    while not omni.platform.keys.trusted:  # Kafka mode: once its listener hears the event store
        assert time.monotonic() < deadline, "the key cache was not trusted within 10 s"
        await asyncio.sleep(0.01)
    tenant_id, key = await omni.tenant()
    before = lookups()
    for _ in range(4):
        assert (await omni.client.get(f"/v1/tenants/{tenant_id}/keys", headers=omni.auth(key))).status_code == 200
    assert counted_since(before) == {"hit": 3, "miss": 1}, "read from the store once, then from memory"

    assert (await omni.client.get("/v1/meters", headers=omni.auth(ADMIN))).status_code == 200
    assert (await omni.client.get("/v1/meters")).status_code == 401
    assert counted_since(before) == {"hit": 3, "miss": 1}, "no key-cache lookup for the admin or without a key"

    key_id = key.split("_")[1]
    assert (await omni.client.delete(f"/v1/keys/{key_id}", headers=omni.auth(ADMIN))).status_code == 204
    for _ in range(2):  # forgotten at once, and never kept again: each is read from the store
        assert (await omni.client.get(f"/v1/tenants/{tenant_id}/keys", headers=omni.auth(key))).status_code == 401
    assert counted_since(before) == {"hit": 3, "miss": 3}
