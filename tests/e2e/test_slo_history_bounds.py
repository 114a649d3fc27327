"""The bounds of an SLO's history, as the OpenAPI document tells them and as the server keeps them:
the window sizes it takes (MINUTE, HOUR, DAY; a meter's MONTH is not one) and at most 10,000
windows, the last partial one counted too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN, Omni, embedded_settings, served

SLO = {"event_type": "inference", "sli": "availability", "status_property": "$.data.status", "objective": 99, "window": "7d"}
HISTORY = "/v1/slos/{name}/history"


@pytest.fixture
async def omni(tmp_path: Path) -> AsyncIterator[Omni]:
    async with served(embedded_settings(tmp_path / "data")) as running:
        put = await running.client.put("/v1/slos/avail", json=SLO, headers=running.auth(ADMIN))
        assert put.status_code == 201, put.text
        await running.settle()
        yield running


async def test_the_document_offers_only_the_window_sizes_the_server_takes(omni: Omni) -> None:
    document = (await omni.client.get("/openapi.json")).json()
    (size,) = [p for p in document["paths"][HISTORY]["get"]["parameters"] if p["name"] == "window_size"]
    schema = size["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    assert schema["enum"] == ["MINUTE", "HOUR", "DAY"]
    params = {"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "window_size": "MONTH"}
    refused = await omni.client.get("/v1/slos/avail/history", params=params, headers=omni.auth(ADMIN))
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json", refused.text
    assert [e["location"] for e in refused.json()["errors"]] == ["query.window_size"], refused.text


async def test_at_most_ten_thousand_windows_the_last_partial_one_included(omni: Omni) -> None:
    """10,000 hours are 10,000 windows; a minute more opens a 10,001st (partial) window: refused."""
    whole = {"from": "2025-01-01T00:00:00Z", "to": "2026-02-21T16:00:00Z", "window_size": "HOUR"}  # 10,000 h
    answer = await omni.client.get("/v1/slos/avail/history", params=whole, headers=omni.auth(ADMIN))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 10_000
    more = {**whole, "to": "2026-02-21T16:01:00Z"}
    refused = await omni.client.get("/v1/slos/avail/history", params=more, headers=omni.auth(ADMIN))
    assert refused.status_code == 422 and "10000 windows" in refused.json()["detail"], refused.text[:300]
