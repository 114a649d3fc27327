"""Each tenant's turns at the meter views (api/tenant_reads.py)."""

from __future__ import annotations

import asyncio

import pytest

from api.problems import Problem
from api.tenant_reads import HeavyReads, TenantReads


async def hold(reads: TenantReads, tenant: str, release: asyncio.Event, *, patient: bool = False) -> str:
    try:
        async with reads.turn(tenant, patient=patient):
            await release.wait()
        return "ran"
    except Problem as refused:
        assert refused.status == 429 and refused.kind == "too-many-queries" and refused.headers == {"Retry-After": "1"}
        return "429"


async def test_a_tenant_runs_its_most_at_once_and_another_tenant_is_not_held() -> None:
    reads = TenantReads(2, waiting=1, wait_seconds=5, heavy=HeavyReads(10))
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
    reads = TenantReads(1, waiting=5, wait_seconds=0.05, heavy=HeavyReads(10))
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


async def test_the_process_runs_at_most_its_heavy_reads_and_a_tenants_watches_leave_its_queries_alone() -> None:
    """Three tenants of two turns each, the process three heavy reads: never more than three run,
    and the next to start is the first that waited. A tenant's watches' answers take turns of their
    own: held, they leave its queries theirs."""
    heavy = HeavyReads(3)
    queries = TenantReads(2, waiting=5, wait_seconds=5, heavy=heavy)
    answers = TenantReads(1, waiting=5, wait_seconds=5, heavy=heavy)
    release = asyncio.Event()
    started: list[str] = []
    running = [0, 0]  # now, most

    async def read(tenant: str, name: str) -> None:
        async with queries.turn(tenant):
            started.append(name)
            running[0] += 1
            running[1] = max(running)
            await release.wait()
            running[0] -= 1

    watch = asyncio.create_task(hold(answers, "a", release))  # a's watch answering
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(read(t, f"{t}{i}")) for i in range(2) for t in "abc"]
    await asyncio.sleep(0.01)
    assert started == ["a0", "b0"]  # a's query started beside its watch; the process is full with 3
    assert running[0] == 2 and heavy.slots._value == 0
    release.set()
    await asyncio.gather(*tasks, watch)
    assert started == ["a0", "b0", "c0", "a1", "b1", "c1"]  # in the order they came
    assert running[1] <= 3 and heavy.slots._value == 3
