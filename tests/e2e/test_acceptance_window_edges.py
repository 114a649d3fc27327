"""The acceptance window's end, end to end, in each mode: an event is admitted while its time is
within OMNI_ACCEPTANCE_WINDOW_SECONDS of its receipt, and remembered for de-duplication as long as
that (event time + window + future tolerance). So a repeat is a duplicate right up to the window's
end, and past it is refused (422) rather than accepted again; an event already past it is refused
and never counted.

The window is the shortest allowed (60 s) and event times are set a second or two from its end, so
the test sees the end pass within a few seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from omni.bootstrap import build
from tests.conftest import cloud_event
from tests.e2e.conftest import Omni, drop_kafka_state, embedded_settings, kafka_settings, services_or_skip

WINDOW = timedelta(seconds=60)
FUTURE = timedelta(seconds=2)
CALLS = {"slug": "calls", "event_type": "call", "aggregation": "COUNT"}


@pytest.fixture(params=["embedded", "kafka"])
async def short(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Omni]:
    limits = {"acceptance_window_seconds": int(WINDOW.total_seconds()), "future_tolerance_seconds": int(FUTURE.total_seconds())}
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "data", **limits)
    else:
        services_or_skip()
        settings = kafka_settings(uuid.uuid4().hex[:12], **limits)
    platform = build(settings)
    app = create_app(platform=platform, background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://omni.test") as client:
            yield Omni(client, platform, app)
    if request.param == "kafka":
        await drop_kafka_state(settings)


def statuses(response: httpx.Response) -> list[str]:
    assert response.status_code == 202, response.text
    return [result["status"] for result in response.json()["results"]]


def refused_as_too_old(response: httpx.Response) -> bool:
    if response.status_code != 422:
        return False
    [error] = response.json()["errors"]
    return any("older than the acceptance window" in reason for reason in error["reasons"])


async def counted(omni: Omni, key: str) -> int:
    await omni.settle()
    return sum(int(row["value"]) for row in await omni.query(key, "calls"))


async def test_a_repeat_is_a_duplicate_up_to_the_windows_end_and_refused_past_it(short: Omni) -> None:
    _, key = await short.tenant()
    await short.meter(**CALLS)
    at = datetime.now(UTC) - WINDOW + timedelta(seconds=1.5)  # just inside: the window ends 1.5 s from now
    event = cloud_event("near-the-end", type_="call", time=at)
    assert statuses(await short.send(key, [event])) == ["accepted"]
    assert statuses(await short.send(key, [event])) == ["duplicate"]

    # Repeat it until the answer changes: it must go from 'duplicate' straight to 'refused'.
    end = at + WINDOW
    deadline = time.monotonic() + 10
    while True:
        sent = datetime.now(UTC)
        response = await short.send(key, [event])
        if response.status_code != 202:
            break
        assert statuses(response) == ["duplicate"], f"accepted again {(sent - at).total_seconds():.3f}s after its time"
        assert time.monotonic() < deadline, "still a duplicate 10 s on: the window never ended"
        await asyncio.sleep(0.02)  # the poll's pace
    answered = datetime.now(UTC)
    assert refused_as_too_old(response), response.text
    assert answered > end, f"refused as too old {(end - answered).total_seconds():.3f}s before the window's end"
    assert sent < end + timedelta(seconds=1), "the answers changed well after the window's end"
    assert await counted(short, key) == 1


async def test_an_event_just_past_the_window_is_refused_and_never_counted(short: Omni) -> None:
    _, key = await short.tenant()
    await short.meter(**CALLS)
    now = datetime.now(UTC)
    inside = cloud_event("inside", type_="call", time=now - WINDOW + timedelta(seconds=3))
    past = cloud_event("past", type_="call", time=now - WINDOW - timedelta(seconds=0.5))
    assert statuses(await short.send(key, [inside])) == ["accepted"]
    refused = await short.send(key, [past])
    assert refused_as_too_old(refused), refused.text
    assert refused_as_too_old(await short.send(key, [past]))  # sent again: refused again, not a 'duplicate'
    # With an event inside the window in the same batch, the whole batch is refused, naming it.
    both = await short.send(key, [cloud_event("inside-2", type_="call", time=now), past])
    assert both.status_code == 422 and [e["index"] for e in both.json()["errors"]] == [1]
    assert await counted(short, key) == 1
