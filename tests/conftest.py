"""Shared helpers for every tier."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

import pytest
import uvloop
from hypothesis import Phase, settings


def cloud_event(
    event_id: str,
    *,
    type_: str = "inference",
    subject: str = "user-1",
    source: str = "gateway",
    time: datetime | None = None,
    data: Any = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {"specversion": "1.0", "id": event_id, "source": source, "type": type_, "subject": subject}
    if time is not None:
        event["time"] = time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if data is not None:
        event["data"] = data
    return event


# Under mutation testing (make mutation: mutmut sets MUTANT_UNDER_TEST), property tests draw the same
# examples every run, so a mutant's verdict does not depend on the luck of the draw; fewer of them
# (tests that set their own max_examples keep it): each runs again for every mutant the example-based
# tests before it leave alive; and a failing example is not shrunk: one kills the mutant, and shrinking
# it took long enough for mutmut to call it a timeout.
if os.environ.get("MUTANT_UNDER_TEST"):
    settings.register_profile(
        "mutation",
        derandomize=True,
        database=None,
        max_examples=30,
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
    )
    settings.load_profile("mutation")


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """uvloop for every async test: `omni serve` (uvicorn) and the Faust workers run on it, and its
    transports are not asyncio's classes (a protocol asserting `asyncio.Transport` passed on
    asyncio's loop and failed in the API)."""
    return uvloop.EventLoopPolicy()


# The files that take longest (seconds of test time, one run of `make test`), started first: `make
# test` hands whole files to its workers in collection order (`--dist loadfile
# --no-loadscope-reorder`), so a long file collected late would run on alone after the others end.
# A file missing here only starts in its usual place.
LONGEST_FILES = (
    "tests/integration/test_parity.py",  # 181 (one test: 2026-12-07 on a slow day)
    "tests/integration/test_crash_points_kafka.py",  # 170
    "tests/e2e/test_openapi_conformance.py",  # 120
    "tests/e2e/test_openapi_conformance_tenant.py",  # 110
    "tests/integration/test_faust_worker.py",  # 107
    "tests/integration/test_start_while_services_are_away.py",  # 102
    "tests/e2e/test_crash_points.py",  # 75
    "tests/e2e/test_openapi_fuzz.py",  # 65
    "tests/integration/test_broker_outage.py",  # 46
    "tests/contract/test_meter_queries_on_each_database.py",  # 43
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {path: rank for rank, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.nodeid.partition("::")[0], len(first)))  # stable: the rest keep their order
