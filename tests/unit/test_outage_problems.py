"""Each dependency away is named in its 503 (api/problems.OUTAGES): a route raising one is answered
with its own problem type and Retry-After, the most specific class winning."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from api import problems
from stores.database import StatementTimedOut, StoreUnavailable
from streams.log import CountersUnavailable, LogUnavailable


@pytest.mark.parametrize(
    ("raised", "kind"),
    [
        (LogUnavailable("disk full"), "log-unavailable"),
        (CountersUnavailable("redis: connection refused"), "counters-unavailable"),
        (StatementTimedOut("canceling statement due to statement timeout"), "statement-timeout"),
        (StoreUnavailable("PostgreSQL failed"), "store-unavailable"),
    ],
)
async def test_each_outage_is_named_in_its_503(raised: Exception, kind: str) -> None:
    app = FastAPI()
    problems.install(app)

    @app.get("/fails")
    def fails() -> None:
        raise raised

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://omni.test") as client:
        answer = await client.get("/fails")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == f"https://omni.dev/problems/{kind}"
    assert answer.headers["retry-after"] == "1"
    assert str(raised) not in answer.text  # what the process saw is logged, not told (hosts, addresses)
