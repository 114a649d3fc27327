"""Each tenant's turns at the meter views (api/tenant_reads.py)."""

from __future__ import annotations

import asyncio

import pytest

from api.problems import Problem
from api.tenant_reads import TenantReads


async def hold(reads: TenantReads, tenant: str, release: asyncio.Event, *, patient: bool = False) -> str:
    try:
        async with reads.turn(tenant, patient=patient):
            await release.wait()
        return "ran"
    except Problem as refused:
        assert refused.status == 429 and refused.kind == "too-many-queries" and refused.headers == {"Retry-After": "1"}
        return "429"


async def test_a_tenant_runs_its_most_at_once_and_another_tenant_is_not_held() -> None:
    reads = TenantReads(2, waiting=1, wait_seconds=5)
    release = asyncio.Event()
    first = [asyncio.create_task(hold(reads, "a", release)) for _ in range(2)]
    await asyncio.sleep(0)
    assert reads.running("a") == 2
    waiting = asyncio.create_task(hold(reads, "a", release))
    refused = asyncio.create_task(hold(reads, "a", release))  # two running, one waiting: no room to wait
    await asyncio.sleep(0)
    assert await refused == "429"
    async with reads.turn("b"):  # another tenant's turn comes at once
        assert reads.running("b") == 1
    release.set()
    assert await asyncio.gather(*first, waiting) == ["ran"] * 3
    assert reads.running("a") == 0 and reads._turns == {}  # nothing kept for idle tenants


async def test_a_wait_past_its_bound_is_refused_and_a_patient_one_waits_on() -> None:
    reads = TenantReads(1, waiting=5, wait_seconds=0.05)
    release = asyncio.Event()
    running = asyncio.create_task(hold(reads, "a", release))
    await asyncio.sleep(0)
    assert await hold(reads, "a", asyncio.Event()) == "429"  # none ended within 0.05 s
    patient = asyncio.create_task(hold(reads, "a", asyncio.Event(), patient=True))
    await asyncio.sleep(0.1)
    assert not patient.done()  # still waiting, past the bound
    release.set()
    assert await running == "ran"
    await asyncio.sleep(0)
    assert reads.running("a") == 1  # the patient one's turn came
    patient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await patient
    assert reads._turns == {}  # a cancelled holder gives its turn back
