"""Consume answered at the connection (api/consume_path.py), over a real socket: the answers the
ASGI path gives, word for word; the quota scenarios hold on it; what it must leave to ASGI goes
there; pipelined requests keep their order; a stalled body is cut off."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from api.app import create_app
from api.consume_path import ConsumePath
from omni.bootstrap import build
from schemas.envelope import decode
from tests.e2e import test_plans_and_quotas as scenarios
from tests.e2e.conftest import ADMIN, Omni, embedded_settings
from tests.e2e.test_http_server import exchange, serving, status_and_body
from tests.e2e.test_plans_and_quotas import CALLS, LATEST, TOKENS, on_plan, put_plan

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The meters of the consumes the consume path answered (not the ASGI path)."""
    answered: list[str] = []
    answer = ConsumePath.answer

    async def counted(self: ConsumePath, claim: Any, body: Any, scope: Any) -> Any:
        answered.append(claim.meter)
        return await answer(self, claim, body, scope)

    monkeypatch.setattr(ConsumePath, "answer", counted)
    return answered


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Omni, int]]:
    """Embedded Omni behind uvicorn on a real port, with the consume path; the Omni's client talks
    HTTP/1.1 over that socket, keeping connections alive as gateways do."""
    settings = embedded_settings(tmp_path / "data", body_timeout_seconds=0.5)
    platform = build(settings)
    app = create_app(platform=platform, background=False)
    async with serving(app, settings) as (port, _):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield Omni(client, platform, app), port


async def ready_tenant(omni: Omni, limit: int = 100) -> str:
    """A tenant on a plan of `limit` tokens a day, its key verified by this process (so the consume path takes it)."""
    await omni.meter(**TOKENS)
    await omni.meter(**CALLS)
    await omni.meter(**LATEST)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": limit, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    assert (await omni.client.get("/v1/quotas/tokens", headers=omni.auth(key))).status_code == 200
    return key


# `Content-Type` sent twice (the same): the connection leaves the request to the ASGI path, whose
# reading (the first) is then the only one (api/consume_path.py).
def asgi_way(headers: dict[str, str]) -> list[tuple[str, str]]:
    return [*((k, v) for k, v in headers.items() if k.lower() != "content-type"), *[("Content-Type", "application/json")] * 2]


def shape(response: httpx.Response) -> tuple[int, list[str], Any]:
    """What the two paths must agree on: status, header names (uvicorn's `date` and `server` aside,
    whose values move), and the body."""
    names = sorted(name for name in response.headers if name not in ("date", "server"))
    body = response.json() if response.content else None
    if isinstance(body, dict):
        body.pop("period_end", None)  # the same for both; present or not alike
    return response.status_code, names, body


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 7, "subject": "customer-1"},  # accepted
        {"amount": 1000},  # refused: past the hard limit (429)
        {"amount": -1},  # the model refuses it: FastAPI's own 422, replayed to it
        {"amount": "lots"},
        {"idempotency_key": "no-amount"},
    ],
)
async def test_each_answer_is_the_asgi_paths_answer(served: tuple[Omni, int], taken: list[str], body: dict[str, Any]) -> None:
    omni, _ = served
    key = await ready_tenant(omni)
    headers = {**omni.auth(key), "traceparent": TRACE}

    async def via(asgi: bool, idempotency_key: str) -> httpx.Response:
        content = json.dumps({"idempotency_key": idempotency_key, **body})
        sent = {**headers, "Content-Type": "application/json"}
        return await omni.client.post("/v1/quotas/tokens/consume", content=content, headers=asgi_way(sent) if asgi else sent)

    fast = await via(False, "k-fast")
    asgi = await via(True, "k-asgi")
    fast_shape, asgi_shape = shape(fast), shape(asgi)
    if fast.status_code == 200:  # each counted its own 7: the second saw the first's
        assert fast_shape[2]["used"] == 7 and asgi_shape[2]["used"] == 14
        fast_shape[2].pop("used"), asgi_shape[2].pop("used"), fast_shape[2].pop("remaining"), asgi_shape[2].pop("remaining")
    assert fast_shape == asgi_shape
    assert fast.headers["cache-control"] == "no-store"
    assert fast.headers["traceparent"].split("-")[1] == TRACE.split("-")[1]  # the caller's trace, continued
    assert fast.headers["traceparent"] != asgi.headers["traceparent"]  # a span of its own
    assert taken == (["tokens"] if fast.status_code in (200, 429) else [])
    if fast.status_code in (200, 429):  # the usage (or refusal) record carries the request's span, on both paths
        topic = omni.platform.topics.usage
        records = [
            r for p in range(omni.platform.topics.partitions(topic)) for r in await omni.platform.log.read(topic, p, 0, 100)
        ]
        carried = {decode(r.value).source_id: decode(r.value).traceparent for r in records}
        assert (carried["k-fast"], carried["k-asgi"]) == (fast.headers["traceparent"], asgi.headers["traceparent"])


async def test_errors_the_route_raises_are_answered_by_the_apps_handlers(served: tuple[Omni, int], taken: list[str]) -> None:
    omni, _ = served
    key = await ready_tenant(omni)
    for meter, body, status in (("nothing", {"amount": 1}, 404), ("speed", {"amount": 1}, 422), ("calls", {"amount": 2}, 422)):
        fast = await omni.client.post(
            f"/v1/quotas/{meter}/consume", json={"idempotency_key": "k", **body}, headers=omni.auth(key)
        )
        asgi = await omni.client.post(
            f"/v1/quotas/{meter}/consume", content=json.dumps({"idempotency_key": "k", **body}), headers=asgi_way(omni.auth(key))
        )
        assert fast.status_code == status and shape(fast) == shape(asgi), fast.text
        assert fast.headers["content-type"] == "application/problem+json"
    assert taken == ["nothing", "speed", "calls"]


@pytest.mark.parametrize(
    "scenario",
    [
        scenarios.test_concurrent_consumers_never_pass_a_hard_limit,
        scenarios.test_a_retry_returns_the_first_answer_and_counts_nothing,
        scenarios.test_bad_consumes_are_refused_and_count_nothing,
        scenarios.test_amounts_and_limits_are_read_as_written,
        scenarios.test_an_override_replaces_the_plan_and_usage_carries_over,
    ],
)
async def test_the_quota_scenarios_hold_on_the_consume_path(
    served: tuple[Omni, int], taken: list[str], scenario: Callable[[Omni], Awaitable[None]]
) -> None:
    omni, _ = served
    await scenario(omni)
    assert taken, "the consume path answered none of the scenario's consumes"


async def test_it_meters_itself_as_the_asgi_path_does(served: tuple[Omni, int], taken: list[str]) -> None:
    omni, _ = served
    key = await ready_tenant(omni)
    template = "/v1/quotas/{meter}/consume"
    before = REGISTRY.get_sample_value("omni_http_requests_total", {"route": template, "method": "POST", "status": "200"}) or 0
    await omni.settle()
    calls_before = len(await api_calls(omni))
    for n in range(5):
        assert (await scenarios.consume(omni, key, "tokens", 1, f"metered-{n}")).status_code == 200
    assert len(taken) == 5
    after = REGISTRY.get_sample_value("omni_http_requests_total", {"route": template, "method": "POST", "status": "200"})
    assert after == before + 5
    await omni.settle()
    recorded = (await api_calls(omni))[calls_before:]
    assert [(r["data"]["route"], r["data"]["status"]) for r in recorded] == [(template, 200)] * 5


async def api_calls(omni: Omni) -> list[dict[str, Any]]:
    platform = omni.platform
    topic = platform.topics.api_calls
    found = []
    for partition in range(platform.topics.partitions(topic)):
        for record in await platform.log.read(topic, partition, 0, 10_000):
            event = orjson.loads(record.value)
            if event["data"].get("route", "").startswith("/v1/quotas/{meter}/consume"):
                found.append(event)
    return sorted(found, key=lambda e: e["time"])


async def test_what_it_must_not_take_goes_the_asgi_way(served: tuple[Omni, int], taken: list[str]) -> None:
    omni, port = served
    key = await ready_tenant(omni)
    body = orjson.dumps({"amount": 1, "idempotency_key": uuid.uuid4().hex})
    auth = f"Authorization: Bearer {key}\r\n"
    head = "POST /v1/quotas/tokens/consume HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    # HTTP/1.0, and a connection the client closes: answered, by ASGI, and closed.
    for request in (
        f"POST /v1/quotas/tokens/consume HTTP/1.0\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n",
        f"{head}{auth}Connection: close\r\nContent-Length: {len(body)}\r\n\r\n",
    ):
        body = orjson.dumps({"amount": 1, "idempotency_key": uuid.uuid4().hex})
        status, answer = status_and_body(await exchange(port, request.encode() + body))
        assert status == 200 and answer["used"] >= 1
    # The admin's key, a key never verified here, and a body sent in chunks: ASGI's to answer.
    fresh_tenant, fresh_key = await omni.tenant("fresh")
    assert (await scenarios.consume(omni, ADMIN, "tokens", 1)).status_code == 403
    assert (await scenarios.consume(omni, fresh_key, "tokens", 1)).status_code == 200

    async def in_chunks() -> AsyncIterator[bytes]:
        yield body

    chunked = await omni.client.post(
        "/v1/quotas/tokens/consume", content=in_chunks(), headers={**omni.auth(key), "Content-Type": "application/json"}
    )
    assert chunked.status_code == 200
    assert taken == []
    assert (await scenarios.consume(omni, fresh_key, "tokens", 1)).status_code == 200  # verified now: taken
    assert taken == ["tokens"]


async def test_pipelined_requests_are_answered_in_order(served: tuple[Omni, int], taken: list[str]) -> None:
    omni, port = served
    key = await ready_tenant(omni)

    def consume_request(n: int) -> bytes:
        body = orjson.dumps({"amount": 1, "idempotency_key": f"pipelined-{n}"})
        head = f"POST /v1/quotas/tokens/consume HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
        return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    health = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    raw = await exchange(port, consume_request(1) + health + consume_request(2) + consume_request(3) + last)
    answers = raw.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b" ", 1)[0] for a in answers] == [b"200"] * 5
    bodies = [orjson.loads(a.partition(b"\r\n\r\n")[2]) for a in answers]
    assert [b.get("used") for b in bodies] == [1, None, 2, 3, None]
    assert bodies[1] == bodies[4] == {"status": "ok"}
    assert len(taken) == 1  # the first; the rest arrived behind a request being answered: ASGI's pipeline


async def test_a_consume_body_that_stalls_is_cut_off(served: tuple[Omni, int]) -> None:
    omni, port = served
    key = await ready_tenant(omni)
    loop = asyncio.get_running_loop()
    started = loop.time()
    head = f"POST /v1/quotas/tokens/consume HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    status, body = status_and_body(await exchange(port, head.encode() + b'{"amount": 1', wait=5.0))
    assert status == 408 and body["type"].endswith("/body-timeout")
    assert loop.time() - started < 4.0  # the 0.5 s limit
    await omni.settle()
    assert (await scenarios.quota(omni, key, "tokens"))["used"] == 0


async def test_a_body_nested_past_the_parser_goes_to_fastapi(served: tuple[Omni, int], taken: list[str]) -> None:
    omni, _ = served
    key = await ready_tenant(omni)
    deep = b"[" * 100_000 + b"]" * 100_000
    fast = await omni.client.post(
        "/v1/quotas/tokens/consume", content=deep, headers={**omni.auth(key), "Content-Type": "application/json"}
    )
    asgi = await omni.client.post("/v1/quotas/tokens/consume", content=deep, headers=asgi_way(omni.auth(key)))
    assert shape(fast) == shape(asgi) and 400 <= fast.status_code < 500, fast.text
    assert taken == []


async def test_a_repeated_key_or_media_type_goes_the_asgi_way(served: tuple[Omni, int], taken: list[str]) -> None:
    """Which of two Authorization headers counts is the edge's reading (the first): never the path's own."""
    omni, port = served
    key = await ready_tenant(omni)
    body = orjson.dumps({"amount": 1, "idempotency_key": "twice"})
    head = "POST /v1/quotas/tokens/consume HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer omni_0123456789abcdef_wrong\r\n"
    head += f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    status, _ = status_and_body(await exchange(port, f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body))
    assert status == 401
    head = f"POST /v1/quotas/tokens/consume HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n"
    twice = head + "Content-Type: text/plain\r\nContent-Type: application/json\r\n"
    status, _ = status_and_body(await exchange(port, f"{twice}Content-Length: {len(body)}\r\n\r\n".encode() + body))
    assert status == 415  # FastAPI reads the first media type: not JSON
    expecting = head + "Content-Type: application/json\r\nExpect: 100-continue\r\n"
    answer = await exchange(port, f"{expecting}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert answer.startswith(b"HTTP/1.1 100 Continue") and b"HTTP/1.1 200 OK" in answer  # uvicorn's own handshake
    assert taken == []


async def test_a_shutdown_while_the_body_arrives_still_answers_it(tmp_path: Path, taken: list[str]) -> None:
    settings = embedded_settings(tmp_path / "data")
    platform = build(settings)
    app = create_app(platform=platform, background=False)
    async with serving(app, settings) as (port, server):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            key = await ready_tenant(Omni(client, platform, app))
        body = orjson.dumps({"amount": 1, "idempotency_key": "at-shutdown"})
        head = f"POST /v1/quotas/tokens/consume HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode())
        await writer.drain()
        await asyncio.sleep(0.1)
        server.should_exit = True  # the server shuts down with the body still to come
        await asyncio.sleep(0.2)
        writer.write(body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer.lower()
        assert taken == ["tokens"]


async def test_an_unexpected_error_is_the_catch_alls_500_and_closes(
    served: tuple[Omni, int], taken: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    omni, port = served
    key = await ready_tenant(omni)

    async def broken(*args: Any) -> Any:
        raise RuntimeError("a bug in the route")

    monkeypatch.setattr("api.routes.quotas.consume", broken)
    monkeypatch.setattr("api.lean_consume.quotas.consume", broken)
    body = orjson.dumps({"amount": 1, "idempotency_key": "bug"})
    answers = []
    for types in (1, 2):  # the second: Content-Type twice, the ASGI path
        head = f"POST /v1/quotas/tokens/consume HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
        head += "Content-Type: application/json\r\n" * types
        answers.append(await exchange(port, f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body))  # read to close
    for answer in answers:
        status, problem = status_and_body(answer)
        assert status == 500 and problem["type"].endswith("/internal")
    assert taken == ["tokens"]


async def test_a_stalled_consume_body_is_counted_as_the_edge_counts_it(served: tuple[Omni, int]) -> None:
    omni, port = served
    key = await ready_tenant(omni)
    labels = {"route": "/v1/quotas/{meter}/consume", "method": "POST", "status": "408"}
    before = REGISTRY.get_sample_value("omni_http_requests_total", labels) or 0
    head = f"POST /v1/quotas/tokens/consume HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    answer = await exchange(port, head.encode() + b'{"amount": 1', wait=5.0)
    status, problem = status_and_body(answer)
    assert status == 408 and problem["instance"] == "/v1/quotas/tokens/consume" and problem["title"] == "Request timeout"
    assert b"connection: close" in answer.lower() and b"cache-control: no-store" in answer.lower()
    assert REGISTRY.get_sample_value("omni_http_requests_total", labels) == before + 1


async def test_a_revoked_key_is_refused_from_the_next_consume_on_the_same_connection(
    served: tuple[Omni, int], taken: list[str]
) -> None:
    """The consume path trusts only keys in the key cache, which a revocation empties before its 204:
    the next consume, on the connection a gateway keeps open, is the edge's 401."""
    omni, _ = served
    key = await ready_tenant(omni)

    async def consume(idempotency_key: str) -> httpx.Response:
        body = {"amount": 1, "idempotency_key": idempotency_key}
        return await omni.client.post("/v1/quotas/tokens/consume", json=body, headers=omni.auth(key))

    assert (await consume("before")).status_code == 200
    assert taken == ["tokens"], "answered at the connection"
    assert (await omni.client.delete(f"/v1/keys/{key.split('_')[1]}", headers=omni.auth(key))).status_code == 204
    refused = await consume("after")
    assert refused.status_code == 401, refused.text
    assert refused.headers["content-type"] == "application/problem+json" and refused.headers["cache-control"] == "no-store"
    assert taken == ["tokens"], "the revoked key went the ASGI way, to the edge"
