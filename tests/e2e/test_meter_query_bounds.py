"""A meter query combines at most OMNI_MAX_QUERY_BUCKETS stored buckets: a tenant decides how many it
has (subjects, group values, minutes), and each costs the API process time and memory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import cloud_event
from tests.e2e.conftest import Omni, embedded_settings, kafka_settings, served, services_or_skip
from tests.e2e.test_bad_input import assert_problem

LIMIT = 4


@pytest.fixture(params=["embedded", "kafka"])
async def bounded(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Omni]:
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "data", max_query_buckets=LIMIT)
    else:
        services_or_skip()
        settings = kafka_settings(uuid.uuid4().hex[:12], max_query_buckets=LIMIT)
    async with served(settings) as running:
        yield running


async def test_a_query_over_more_buckets_than_the_limit_is_refused_before_reading(bounded: Omni) -> None:
    omni = bounded
    await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
    _, key = await omni.tenant("many")
    _, other = await omni.tenant("other")
    hour = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    # Six subjects in six minutes of one hour: six minute buckets, one per subject.
    events = [cloud_event(f"e{i}", subject=f"s{i}", time=hour + timedelta(minutes=i), data={"tokens": i + 1}) for i in range(6)]
    assert (await omni.send(key, events)).status_code == 202
    assert (await omni.send(other, [cloud_event("o", data={"tokens": 1}, time=hour)])).status_code == 202
    await omni.settle()
    url = "/v1/meters/tokens/query"
    refused = await omni.client.get(url, params={"window_size": "MINUTE", "group_by": "subject"}, headers=omni.auth(key))
    body = assert_problem(refused, 422)
    assert body["type"].endswith("/query-too-large") and f"more than {LIMIT} stored buckets" in body["detail"]
    # Fewer buckets: a subject filter, a narrower range, or no subjects (one hour bucket of totals).
    assert len(await omni.query(key, "tokens", window_size="MINUTE", subject=["s1", "s2"])) == 2
    start, end = hour.isoformat().replace("+00:00", "Z"), (hour + timedelta(minutes=4)).isoformat().replace("+00:00", "Z")
    assert len(await omni.query(key, "tokens", window_size="MINUTE", group_by="subject", **{"from": start, "to": end})) == 4
    assert [row["value"] for row in await omni.query(key, "tokens", window_size="HOUR")] == [21]
    # Another tenant's buckets are not counted against it, nor its against another.
    assert [row["value"] for row in await omni.query(other, "tokens", window_size="MINUTE", group_by="subject")] == [1]
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    as_of = await omni.client.get(url, params={"group_by": "subject", "as_of": now}, headers=omni.auth(key))
    assert assert_problem(as_of, 422)["type"].endswith("/query-too-large")  # as of an instant too
