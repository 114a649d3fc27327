"""Schemathesis against the served OpenAPI schema: whatever it sends, no 5xx, and every
error is problem+json. The server is real (a socket, `omni serve` in embedded mode).

Cases come from schemathesis' hypothesis strategies, driven by hypothesis directly
(its pytest plugin does not load under this pytest)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import ADMIN
from tests.e2e.test_crash_restart_embedded import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("fuzz") / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMNI_WATCH_SECONDS", "0.2")  # a live watch the generated cases open ends soon
        running.start()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tenant = httpx.post(running.url + "/v1/tenants", json={"name": "fuzz", "plan": "p"}, headers=admin).json()
    running.tenant_key = tenant["api_key"]  # type: ignore[attr-defined]
    httpx.post(running.url + "/v1/meters", json={"slug": "tokens", "event_type": "t", "aggregation": "COUNT"}, headers=admin)
    yield running
    running.stop()


def test_no_server_errors_and_problems_everywhere(server: Server) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    keys = (ADMIN, server.tenant_key, "omni_nope_nope")  # type: ignore[attr-defined]

    for operation in operations:
        cases = st.one_of(
            operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
        )

        @given(case=cases, key=st.sampled_from(keys))
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def probe(case: schemathesis.Case, key: str) -> None:
            response = case.call(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
            where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
            assert response.status_code < 500, where
            if response.status_code >= 400:
                content_type = response.headers.get("content-type") or [""]  # schemathesis keeps every value
                assert content_type[0].startswith("application/problem+json"), where
                body = response.json()
                assert body["status"] == response.status_code and body["title"], where

        probe()
    # The fuzzing really reached the server: its own request counter says so.
    metrics = httpx.get(server.url + "/metrics").text
    served = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("omni_http_requests_total{"))
    assert served >= 5 * len(operations)
