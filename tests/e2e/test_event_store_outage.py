"""The event store away in Kafka mode (PostgreSQL): requests that need it answer 503, never 500.

eventsourcing raises its own OperationalError and InterfaceError when PostgreSQL cannot be reached
(after its own retries). A walkthrough that took the event store's PostgreSQL away from a running
`omni serve` found every request with a key not verified yet (all of them, once the process stops
hearing the store's notices) answered 500 after about 50 s, and a command's write likewise. Here
the event store's connection pool is closed under a served platform: each read fails as an outage
does, at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.e2e.conftest import ADMIN, Omni, kafka_settings, served, services_or_skip
from tests.e2e.test_bad_input import assert_problem


@pytest.fixture
async def omni_in_kafka_mode() -> AsyncIterator[Omni]:
    services_or_skip()
    async with served(kafka_settings(uuid.uuid4().hex[:12]), timeout=60.0) as running:
        yield running


def take_the_event_store_away(omni: Omni) -> None:
    omni.platform.control.recorder.datastore.pool.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "path", "body", "token"),
    [
        ("GET", "/v1/tenants", None, "omni_0123456789abcdef_never-verified"),
        ("POST", "/v1/events", [], "omni_0123456789abcdef_never-verified"),
        ("POST", "/v1/tenants", {"name": "acme", "plan": "pro"}, ADMIN),
        ("PUT", "/v1/plans/pro", {"entitlements": []}, ADMIN),
    ],
    ids=["key-check-on-a-read", "key-check-on-ingest", "command-creating-a-tenant", "command-publishing-a-plan"],
)
async def test_requests_needing_the_event_store_answer_503_while_it_is_away(
    omni_in_kafka_mode: Omni, method: str, path: str, body: object, token: str
) -> None:
    omni = omni_in_kafka_mode
    take_the_event_store_away(omni)
    answer = await omni.client.request(method, path, json=body, headers=omni.auth(token))
    problem = assert_problem(answer, 503)
    assert problem["type"].endswith("/store-unavailable")
    assert answer.headers["retry-after"] == "1"
