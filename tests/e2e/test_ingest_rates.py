"""One tenant's flood of events is refused past its rate, whole batches, nothing of them recorded,
and every other tenant's events are taken as before (OMNI_TENANT_EVENTS_PER_SECOND)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from api.ingest_rates import IngestRates
from tests.conftest import cloud_event
from tests.e2e.conftest import embedded_settings, served

CALLS = {"slug": "calls", "event_type": "request", "aggregation": "COUNT"}


def batch(prefix: str, size: int = 1000) -> list[dict[str, object]]:
    return [cloud_event(f"{prefix}-{n}", type_="request") for n in range(size)]


async def test_a_tenant_past_its_rate_is_refused_and_the_others_are_not(tmp_path: Path) -> None:
    async with served(embedded_settings(tmp_path / "data", tenant_events_per_second=1500)) as omni:
        now = [1000.0]  # the buckets' clock, moved by the test: a slow machine refills nothing meanwhile
        omni.app.state.ingest_rates = IngestRates(1500, batch=1000, clock=lambda: now[0])
        await omni.meter(**CALLS)
        _, flooding = await omni.tenant("flooding")
        _, quiet = await omni.tenant("quiet")
        refused_before = REGISTRY.get_sample_value("omni_ingest_rate_limited_total") or 0

        first, second = await omni.send(flooding, batch("a")), await omni.send(flooding, batch("b"))
        assert (first.status_code, second.status_code) == (202, 429), second.text
        assert second.headers["content-type"] == "application/problem+json"
        assert (
            second.json()["type"].endswith("ingest-rate-exceeded") and "OMNI_TENANT_EVENTS_PER_SECOND" in second.json()["detail"]
        )
        wait = int(second.headers["retry-after"])
        assert wait == 1, "500 events short at 1,500 a second"
        assert (await omni.send(quiet, batch("q"))).status_code == 202, "another tenant's bucket is its own"
        assert REGISTRY.get_sample_value("omni_ingest_rate_limited_total") == refused_before + 1

        now[0] += wait
        again = await omni.send(flooding, batch("b"))  # the refused batch as it was: nothing of it was taken
        assert again.status_code == 202 and again.json()["accepted"] == 1000, again.text
        await omni.settle()
        totals = {key: sum(row["value"] for row in await omni.query(key, "calls")) for key in (flooding, quiet)}
        assert totals == {flooding: 2000, quiet: 1000}
