"""Consume's lean path (api/lean_consume.py) answers exactly as FastAPI's route does: the same
status, headers and body for each outcome, the same route in the api_call record, and every
request it does not take (another key, media type or body shape) refused by FastAPI as before."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.routing import Match

from api.lean_consume import LeanConsume
from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_plans_and_quotas import CALLS, LATEST, TOKENS, on_plan, put_plan

URL = "/v1/quotas/{}/consume"


class _NoRoute:
    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        return Match.NONE, {}


def lean_layer(omni: Omni) -> LeanConsume:
    layer: Any = omni.app.middleware_stack
    while layer is not None and not isinstance(layer, LeanConsume):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, LeanConsume), "the lean layer is installed"
    return layer


@contextlib.contextmanager
def through_fastapi(omni: Omni) -> Iterator[None]:
    """Requests in the block take FastAPI's route: the lean layer matches nothing."""
    layer = lean_layer(omni)
    route = layer.route
    layer.route = _NoRoute()  # type: ignore[assignment]
    try:
        yield
    finally:
        layer.route = route


def shown(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """What the two paths must agree on; `idempotent-replayed` apart (`both` sends a request, then
    the same again: the second is the replay), checked on its own."""
    left_out = ("date", "traceparent", "retry-after", "idempotent-replayed")
    headers = {k: v for k, v in response.headers.items() if k not in left_out}
    return response.status_code, headers, response.content


def first_then_replayed(first: httpx.Response, replay: httpx.Response) -> bool:
    return "idempotent-replayed" not in first.headers and replay.headers.get("idempotent-replayed") == "true"


async def post(omni: Omni, key: str, meter: str, body: Any, **headers: str) -> httpx.Response:
    if isinstance(body, bytes):
        return await omni.client.post(URL.format(meter), content=body, headers={**omni.auth(key), **headers})
    return await omni.client.post(URL.format(meter), json=body, headers={**omni.auth(key), **headers})


async def both(omni: Omni, key: str, meter: str, body: Any, **headers: str) -> tuple[httpx.Response, httpx.Response]:
    lean = await post(omni, key, meter, body, **headers)
    with through_fastapi(omni):
        routed = await post(omni, key, meter, body, **headers)
    return lean, routed


async def test_every_outcome_is_answered_as_fastapi_answers_it(omni: Omni) -> None:
    await omni.client.get("/healthz")  # builds the middleware stack
    for meter in (TOKENS, CALLS, LATEST):
        await omni.meter(**meter)
    await put_plan(omni, "tiny", {"meter": "tokens", "limit": 10, "period": "DAY", "enforcement": "hard"}, status=201)
    tenant_id, key = await omni.tenant("lean")
    await on_plan(omni, tenant_id, "tiny")

    # Accepted, then replayed through the other path: the same answer, byte for byte.
    first = {"amount": 4, "idempotency_key": "k-1", "subject": "s", "data": {"model": "m"}}
    lean, routed = await both(omni, key, "tokens", first)
    assert lean.status_code == 200, lean.text
    assert shown(lean) == shown(routed) and first_then_replayed(lean, routed)
    assert lean.headers["content-type"] == "application/json" and lean.headers["cache-control"] == "no-store"
    with through_fastapi(omni):
        second = await post(omni, key, "tokens", {"amount": 5, "idempotency_key": "k-2"})
    assert second.status_code == 200, second.text
    replayed = await post(omni, key, "tokens", {"amount": 5, "idempotency_key": "k-2"})
    assert shown(replayed) == shown(second) and first_then_replayed(second, replayed)

    # Refused (429), and its replay; a key reused for another amount (409).
    lean, routed = await both(omni, key, "tokens", {"amount": 2, "idempotency_key": "k-3"})
    assert lean.status_code == 429, lean.text
    assert shown(lean) == shown(routed) and lean.headers["retry-after"] and routed.headers["retry-after"]
    assert first_then_replayed(lean, routed)
    lean, routed = await both(omni, key, "tokens", {"amount": 3, "idempotency_key": "k-1"})
    assert lean.status_code == 409 and shown(lean) == shown(routed)

    # Refused before anything is decided: unknown meter, a meter without quotas, a COUNT amount.
    for meter, body, status in (
        ("nope", {"amount": 1, "idempotency_key": "k-4"}, 404),
        ("speed", {"amount": 1, "idempotency_key": "k-5"}, 422),
        ("calls", {"amount": 2, "idempotency_key": "k-6"}, 422),
    ):
        lean, routed = await both(omni, key, meter, body)
        assert lean.status_code == status, lean.text
        assert shown(lean) == shown(routed)

    # Not taken by the lean path: FastAPI refuses them as it always has.
    for body, headers, status in (
        ({"amount": 0, "idempotency_key": "k-7"}, {}, 422),
        ({"amount": 1}, {}, 422),
        ({"amount": 1, "idempotency_key": "k-8", "extra": 1}, {}, 422),
        (b'{"amount": 1, "idempotency_key": ', {"Content-Type": "application/json"}, 400),
        (b"", {"Content-Type": "application/json"}, 422),
        (b'{"amount": 1, "idempotency_key": "k-9"}', {"Content-Type": "text/plain"}, 415),
    ):
        lean, routed = await both(omni, key, "tokens", body, **headers)
        assert lean.status_code == status, (body, lean.text)
        assert shown(lean) == shown(routed)
    lean, routed = await both(omni, ADMIN, "tokens", {"amount": 1, "idempotency_key": "k-10"})
    assert lean.status_code == 403 and shown(lean) == shown(routed)


async def test_a_lean_consume_is_recorded_under_its_route(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await omni.settle()
    _, key = await omni.tenant("recorded")
    answer = await post(omni, key, "tokens", {"amount": 1, "idempotency_key": uuid.uuid4().hex})
    assert answer.status_code == 200, answer.text
    calls = [e for e in omni.app.state.api_calls.buffer if e.data["route"].startswith("/v1/quotas")]
    assert [(e.data["route"], e.data["status"]) for e in calls] == [("/v1/quotas/{meter}/consume", 200)]


@pytest.mark.parametrize("media", ["application/json", "application/json; charset=utf-8", "application/vnd.x+json"])
async def test_json_media_types_are_taken(omni: Omni, media: str) -> None:
    await omni.client.get("/healthz")
    await omni.meter(**TOKENS)
    await omni.settle()
    _, key = await omni.tenant("media")
    taken: list[str] = []
    layer = lean_layer(omni)
    original = layer.app

    async def behind(scope: Any, receive: Any, send: Any) -> None:
        taken.append(scope["path"])
        await original(scope, receive, send)

    layer.app = behind
    try:
        answer = await post(omni, key, "tokens", b'{"amount": 1, "idempotency_key": "m-1"}', **{"Content-Type": media})
    finally:
        layer.app = original
    assert answer.status_code == 200, answer.text
    assert taken == [], "answered by the lean path, not handed on"


async def test_a_log_outage_is_503_on_both_paths(omni: Omni, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.log import LogUnavailable

    await omni.client.get("/healthz")
    await omni.meter(**TOKENS)
    await omni.settle()
    _, key = await omni.tenant("outage")
    assert omni.platform.quotas is not None

    async def down(request: Any) -> Any:
        raise LogUnavailable("the log is away")

    monkeypatch.setattr(omni.platform.quotas, "consume", down)
    lean, routed = await both(omni, key, "tokens", {"amount": 1, "idempotency_key": "o-1"})
    assert lean.status_code == 503 and lean.headers["retry-after"] == "1", lean.text
    assert shown(lean) == shown(routed)
