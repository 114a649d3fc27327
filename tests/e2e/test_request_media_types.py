"""A JSON body in another media type is 415 problem+json on every route that takes a JSON body
(api.deps.json_body_media_type), as the OpenAPI document declares: never a 422 about its shape.
Consume included, on each of its paths (ASGI, the lean middleware, the connection's own)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson

from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_consume_path import ready_tenant, served, taken  # noqa: F401 - fixtures
from tests.e2e.test_plans_and_quotas import TOKENS, on_plan, put_plan

CONSUME = orjson.dumps({"amount": 1, "idempotency_key": "k1"})
PLAN = orjson.dumps({"entitlements": [{"meter": "tokens", "limit": 10, "period": "DAY"}]})


def assert_unsupported(response: httpx.Response, *, post: bool) -> dict[str, Any]:
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/unsupported-media-type") and "application/json" in body["detail"]
    assert response.headers.get("accept-post") == ("application/json" if post else None)
    return body  # type: ignore[no-any-return]


async def test_a_json_body_in_another_media_type_is_415(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await put_plan(omni, "pro", {"meter": "tokens", "limit": 100, "period": "DAY"}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "pro")
    consume = "/v1/quotas/tokens/consume"
    for media in ("text/plain", "application/x-www-form-urlencoded", "application/jsonl", None):
        headers = {**omni.auth(key), **({"Content-Type": media} if media else {})}
        body = assert_unsupported(await omni.client.post(consume, content=CONSUME, headers=headers), post=True)
        assert (media or "no Content-Type") in body["detail"]
        headers = {**omni.auth(ADMIN), **({"Content-Type": media} if media else {})}
        assert_unsupported(await omni.client.put("/v1/plans/pro", content=PLAN, headers=headers), post=False)
    # JSON media types are taken: application/json (with parameters) and application/*+json.
    for n, media in enumerate(("application/json", "application/json; charset=utf-8", "application/vnd.omni+json")):
        body = orjson.dumps({"amount": 1, "idempotency_key": f"ok{n}"})
        response = await omni.client.post(consume, content=body, headers={**omni.auth(key), "Content-Type": media})
        assert response.status_code == 200, (media, response.text)
    assert (await omni.client.get("/v1/plans/pro", headers=omni.auth(ADMIN))).json()["version"] == 1  # nothing changed
    # A route whose body is optional still takes none, whatever the Content-Type.
    issued = await omni.client.post(f"/v1/tenants/{tenant_id}/keys", headers={**omni.auth(key), "Content-Type": "text/plain"})
    assert issued.status_code == 201, issued.text


async def test_the_consume_path_leaves_other_media_types_to_fastapi(served: tuple[Omni, int], taken: list[str]) -> None:  # noqa: F811
    omni, _ = served
    key = await ready_tenant(omni)
    headers = {**omni.auth(key), "Content-Type": "text/plain"}
    assert_unsupported(await omni.client.post("/v1/quotas/tokens/consume", content=CONSUME, headers=headers), post=True)
    assert taken == []
    ok = orjson.dumps({"amount": 1, "idempotency_key": uuid.uuid4().hex})
    response = await omni.client.post(
        "/v1/quotas/tokens/consume", content=ok, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 200 and taken == ["tokens"]
