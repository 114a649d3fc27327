"""omni_http_requests_total and omni_http_request_seconds, which the platform's alerts read
(ops/prometheus/platform.rules.yml): every request is counted, whatever OMNI_METER_API_CALLS says,
and no caller can add series to them at will."""

from __future__ import annotations

from pathlib import Path

import orjson
from prometheus_client import REGISTRY

from tests.conftest import cloud_event
from tests.e2e.conftest import SINGLE, embedded_settings, served


def requests_counted(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("omni_http_requests_total", labels) or 0.0


def methods_counted() -> set[str]:
    return {
        sample.labels["method"]
        for family in REGISTRY.collect()
        if family.name == "omni_http_requests"
        for sample in family.samples
        if sample.name == "omni_http_requests_total"
    }


async def test_requests_are_counted_with_api_call_records_off(tmp_path: Path) -> None:
    """OMNI_METER_API_CALLS=false turns off the `api_call` records only: the HTTP metrics, and so
    the error-ratio, latency and ingest alerts, went dark with them."""
    async with served(embedded_settings(tmp_path / "data", meter_api_calls=False)) as omni:
        before = (
            requests_counted("/v1/events", "POST", "202"),
            requests_counted("/healthz", "GET", "200"),
            REGISTRY.get_sample_value("omni_http_request_seconds_count", {"route": "/v1/events"}) or 0.0,
        )
        _, key = await omni.tenant()
        headers = {**omni.auth(key), "Content-Type": SINGLE}
        response = await omni.client.post("/v1/events", content=orjson.dumps(cloud_event("counted")), headers=headers)
        assert response.status_code == 202
        assert (await omni.client.get("/healthz")).status_code == 200
        after = (
            requests_counted("/v1/events", "POST", "202"),
            requests_counted("/healthz", "GET", "200"),
            REGISTRY.get_sample_value("omni_http_request_seconds_count", {"route": "/v1/events"}) or 0.0,
        )
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
        # Nothing recorded on the log for it: that is what the setting turns off.
        await omni.settle()
        topic = omni.platform.topics.api_calls
        for partition in range(omni.platform.topics.partitions(topic)):
            assert await omni.platform.log.read(topic, partition, 0, 10) == []
        # The ingest alert's first 5xx is exported at 0 from the start, as with the records on.
        assert (
            REGISTRY.get_sample_value("omni_http_requests_total", {"route": "/v1/events", "method": "POST", "status": "503"})
            is not None
        )


async def test_a_method_of_the_callers_choosing_is_counted_as_other(tmp_path: Path) -> None:
    """The method label takes HTTP's own methods only, as OpenTelemetry's `http.request.method`
    does: any other token is `_OTHER`. A server that passes any token through (uvicorn's h11,
    hypercorn) let one caller make a series per method it made up, each held forever."""
    async with served(embedded_settings(tmp_path / "data")) as omni:
        before = requests_counted("/healthz", "_OTHER", "405")
        for n in range(20):
            assert (await omni.client.request(f"MADEUP{n}", "/healthz")).status_code == 405
        assert (await omni.client.request("OPTIONS", "/healthz")).status_code == 405
        assert requests_counted("/healthz", "_OTHER", "405") - before == 20
        assert requests_counted("/healthz", "OPTIONS", "405") >= 1
        assert not [m for m in methods_counted() if m.startswith("MADEUP")]
