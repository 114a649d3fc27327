"""A platform SLO defined over history notifies the transitions that history holds, as one defined
before the events did: its catch-up walks every partition's events together, in the order they were
recorded, not one partition after another (which made every event of the later partitions late,
so an outage in one tenant's partition never paged)."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streams.replay import Mode as ReplayMode
from streams.replay import Request
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni, embedded_settings, served

PARTITIONS = 2
SLO = {"event_type": "inference", "sli": "availability", "status_property": "$.data.status", "window": "30d"}
Told = list[tuple[str, str, str]]


async def tenants_on_each_partition(omni: Omni) -> dict[int, str]:
    """A tenant's key on partition 0 and one on partition 1 (a tenant's partition follows its id)."""
    keys: dict[int, str] = {}
    for n in range(64):
        tenant_id, key = await omni.tenant(f"t{n}")
        keys.setdefault(zlib.crc32(tenant_id.encode()) % PARTITIONS, key)
        if len(keys) == PARTITIONS:
            return keys
    raise AssertionError("no tenant on each partition")


async def an_hour_of_traffic(omni: Omni, per_minute: dict[int, int]) -> None:
    """Every minute, partition 0's tenant's events, all good, then partition 1's, all bad for 6
    minutes, each minute folded as it comes."""
    keys = await tenants_on_each_partition(omni)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=60)
    for minute in range(61):
        at = start + timedelta(minutes=minute, seconds=5)
        for partition, key in sorted(keys.items()):
            status = 503 if 20 <= minute <= 25 and partition == 1 else 200
            events = [cloud_event(f"{minute}-{i}", time=at, data={"status": status}) for i in range(per_minute[partition])]
            assert (await omni.send(key, events)).status_code == 202
        await omni.settle()


async def before_and_after(tmp_path: Path, *, batch_size: int, objective: float, per_minute: dict[int, int]) -> dict[str, Told]:
    """An hour of traffic as it comes, folded as it comes into a platform SLO defined before; then
    the same SLO defined again, caught up from the log. What each notified."""
    settings = embedded_settings(tmp_path / "data", usage_partitions=PARTITIONS, runner_batch_size=batch_size)
    async with served(settings) as omni:
        slo = {**SLO, "objective": objective}
        assert (await omni.client.put("/v1/slos/before", json=slo, headers=omni.auth(ADMIN))).status_code == 201
        await omni.settle()
        await an_hour_of_traffic(omni, per_minute)
        assert (await omni.client.put("/v1/slos/after", json=slo, headers=omni.auth(ADMIN))).status_code == 201
        await omni.settle()
        listed = (await omni.client.get("/v1/notifications", params={"limit": 500}, headers=omni.auth(ADMIN))).json()
    return {
        name: sorted((n["type"], n["alert"], n["occurred_at"]) for n in listed["data"] if n["slo"] == name)
        for name in ("before", "after")
    }


async def test_an_outage_in_a_later_partition_pages_a_platform_slo_defined_later(tmp_path: Path) -> None:
    told = await before_and_after(tmp_path, batch_size=5000, objective=99.9, per_minute={0: 10, 1: 10})
    assert any(notice[:2] == ("omni.slo.alert_fired", "page") for notice in told["before"]), told
    assert told["after"] == told["before"]


async def test_a_catch_up_read_in_batches_keeps_the_partitions_abreast(tmp_path: Path) -> None:
    """7 records of each partition at a time: partition 1's 10 a minute would run ahead of partition
    0's 30, and its outage burn undiluted by them; the catch-up stops each partition at the recorded
    time of the one read least far."""
    told = await before_and_after(tmp_path, batch_size=7, objective=99, per_minute={0: 30, 1: 10})
    assert told["after"] == told["before"]


async def test_a_replay_tells_a_platform_slos_transitions_as_the_live_fold_did(tmp_path: Path) -> None:
    """A replay folded the log one partition after another, so for a platform SLO every event of the
    later partitions came late, and the rebuilt views lost its outage's page (a walkthrough's diff:
    the live views' transitions, none in the rebuild). Its platform SLOs are caught up over every
    partition together, as one defined over history is."""
    settings = embedded_settings(tmp_path / "data", usage_partitions=PARTITIONS)
    async with served(settings) as omni:
        slo = {**SLO, "objective": 99.9}
        assert (await omni.client.put("/v1/slos/live", json=slo, headers=omni.auth(ADMIN))).status_code == 201
        await omni.settle()
        await an_hour_of_traffic(omni, {0: 10, 1: 10})
        listed = (await omni.client.get("/v1/notifications", params={"limit": 500}, headers=omni.auth(ADMIN))).json()
        assert any((n["type"], n["alert"]) == ("omni.slo.alert_fired", "page") for n in listed["data"]), listed
        outcome = await omni.platform.replays.replayer.run(Request(("slos",), ReplayMode.DIFF))
        assert outcome.differences == [], outcome.differences[:5]
