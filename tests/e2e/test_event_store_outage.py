"""The event store away in Kafka mode (PostgreSQL): requests that need it answer 503, never 500.

eventsourcing raises its own OperationalError and InterfaceError when PostgreSQL cannot be reached
(after its own retries). A walkthrough that took the event store's PostgreSQL away from a running
`omni serve` found every request with a key not verified yet (all of them, once the process stops
hearing the store's notices) answered 500 after about 50 s, and a command's write likewise. Here
the event store's connection pool is closed under a served platform: each read fails as an outage
does, at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlparse, urlunparse

import httpx
import pytest

from tests.e2e.conftest import ADMIN, Omni, kafka_settings, served, services_or_skip
from tests.e2e.test_bad_input import assert_problem
from tests.tcp_proxy import TcpProxy


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


# PostgreSQL itself away, behind a proxy of the test's own (tests/tcp_proxy.py): the pools see what
# they would see, refused connections and connections cut. A walkthrough found every request needing
# PostgreSQL (a key not cached, a command, a view read) answered 503 only after 42 to 52 s (a command
# creating a tenant: over 70 s), and, PostgreSQL back after two minutes, 503s for 100 s more.
WAIT = 1.0  # OMNI_DATABASE_WAIT_SECONDS here
ANSWERED_WITHIN = 6.0  # the wait, and room for a loaded machine; it was 42 s and more
NEVER_VERIFIED = "omni_0123456789abcdef_never-verified"


@pytest.fixture
async def behind_a_proxy() -> AsyncIterator[tuple[Omni, TcpProxy]]:
    services_or_skip()
    url = urlparse(kafka_settings("x").database_url)
    with TcpProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
        through = urlunparse(url._replace(netloc=f"{url.netloc.rpartition('@')[0]}@{proxy.address}"))
        settings = kafka_settings(
            uuid.uuid4().hex[:12], database_url=through, database_wait_seconds=WAIT, database_statement_seconds=WAIT
        )
        async with served(settings, timeout=30.0) as running:
            yield running, proxy
            proxy.up()  # the test's schema and topics are dropped through it


async def timed(omni: Omni, method: str, path: str, body: object, token: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = await omni.client.request(method, path, json=body, headers=omni.auth(token))
    return answer, time.monotonic() - started


async def test_while_postgresql_is_away_requests_get_503_within_the_wait_and_are_served_once_it_is_back(
    behind_a_proxy: tuple[Omni, TcpProxy],
) -> None:
    omni, proxy = behind_a_proxy
    tenant_id, key = await omni.tenant()
    meter = {"slug": "calls", "event_type": "call", "aggregation": "COUNT"}
    assert (await omni.client.post("/v1/meters", json=meter, headers=omni.auth(ADMIN))).status_code == 201
    await omni.settle()  # the meter in the views
    requests = {
        "a key not cached": ("GET", "/v1/tenants", None, NEVER_VERIFIED),
        "a view read": ("GET", "/v1/meters/calls", None, key),
        "a command": ("PUT", "/v1/plans/pro", {"entitlements": []}, ADMIN),
        "a command sealing its actor": ("POST", "/v1/tenants", {"name": "acme", "plan": "pro"}, ADMIN),
        "a key issued": ("POST", f"/v1/tenants/{tenant_id}/keys", {"label": "ci"}, ADMIN),
    }

    proxy.down()
    for what, (method, path, body, token) in requests.items():
        answer, took = await timed(omni, method, path, body, token)
        problem = assert_problem(answer, 503)
        assert problem["type"].endswith("/store-unavailable"), what
        assert answer.headers["retry-after"] == "1", what
        assert took < ANSWERED_WITHIN, f"{what}: 503 after {took:.1f} s"
    await asyncio.sleep(8)  # long enough for psycopg_pool's own backoff to wait 8 s before its next try

    proxy.up()
    for what, (method, path, body, token) in requests.items():
        if token == NEVER_VERIFIED:
            token, path = ADMIN, "/v1/tenants"
        answer, took = await timed(omni, method, path, body, token)
        assert answer.status_code < 300, f"{what}, PostgreSQL back: {answer.status_code} {answer.text}"
        assert took < ANSWERED_WITHIN, f"{what}, PostgreSQL back: answered after {took:.1f} s"


async def test_a_connection_dropped_under_a_request_costs_it_nothing(behind_a_proxy: tuple[Omni, TcpProxy]) -> None:
    """A blip, not an outage: every open connection cut (PostgreSQL restarted, a proxy's idle
    timeout), PostgreSQL still there. Each store operation is retried on a new connection."""
    omni, proxy = behind_a_proxy
    tenant_id, key = await omni.tenant()
    await omni.settle()  # the tenant in the views
    proxy.cut()  # the key's first use: read from the event store
    assert (await omni.client.get(f"/v1/tenants/{tenant_id}", headers=omni.auth(key))).status_code == 200
    proxy.cut()
    assert (await omni.client.put("/v1/plans/pro", json={"entitlements": []}, headers=omni.auth(ADMIN))).status_code == 201
    proxy.cut()
    assert (await omni.client.post(f"/v1/tenants/{tenant_id}/keys", json={}, headers=omni.auth(ADMIN))).status_code == 201


async def test_a_frozen_postgresql_costs_a_request_the_statement_bound_and_a_503(
    behind_a_proxy: tuple[Omni, TcpProxy],
) -> None:
    """PostgreSQL stopped without a word (SIGSTOP, a frozen host): connections stay open and nothing
    answers. Every request needing it waited until its client gave up; now each is answered 503
    once the statement bound (here WAIT, below the client's timeout) has passed unanswered."""
    omni, proxy = behind_a_proxy
    tenant_id, key = await omni.tenant()
    meter = {"slug": "calls", "event_type": "call", "aggregation": "COUNT"}
    assert (await omni.client.post("/v1/meters", json=meter, headers=omni.auth(ADMIN))).status_code == 201
    await omni.settle()
    requests = {
        "a key not cached": ("GET", "/v1/tenants", None, NEVER_VERIFIED),
        "a view read": ("GET", "/v1/meters/calls", None, key),
        "a command": ("PUT", "/v1/plans/pro", {"entitlements": []}, ADMIN),
    }

    proxy.freeze()
    try:
        for what, (method, path, body, token) in requests.items():
            answer, took = await timed(omni, method, path, body, token)
            problem = assert_problem(answer, 503)
            assert problem["type"].endswith("/store-unavailable"), what
            assert took < ANSWERED_WITHIN, f"{what}: 503 after {took:.1f} s"
    finally:
        proxy.thaw()
    for what, (method, path, body, token) in requests.items():
        if token == NEVER_VERIFIED:
            token = ADMIN
        answer, took = await timed(omni, method, path, body, token)
        assert answer.status_code < 300, f"{what}, PostgreSQL awake: {answer.status_code} {answer.text}"
        assert took < ANSWERED_WITHIN, f"{what}, PostgreSQL awake: answered after {took:.1f} s"
