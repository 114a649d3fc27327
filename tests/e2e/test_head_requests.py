"""HEAD wherever GET is (RFC 9110): the GET's status and headers without its body, for uptime
checkers and caches; a live watch, a stream, is 405 to HEAD; metrics name the request HEAD."""

from __future__ import annotations

from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_http_metrics import requests_counted

TOKENS = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}


async def test_head_answers_as_get_without_a_body(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant()
    await omni.settle()
    for path, headers in (
        ("/healthz", {}),
        ("/v1/meters", omni.auth(key)),
        ("/v1/meters/tokens", omni.auth(key)),
        ("/v1/meters/tokens/query?window_size=DAY", omni.auth(key)),
        ("/v1/tenants", omni.auth(ADMIN)),
    ):
        got = await omni.client.get(path, headers=headers)
        head = await omni.client.head(path, headers=headers)
        assert (head.status_code, got.status_code) == (200, 200), path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers["content-length"] == str(len(got.content)), path


async def test_head_is_refused_as_get_is(omni: Omni) -> None:
    _, key = await omni.tenant()
    unauthenticated = await omni.client.head("/v1/meters")
    assert unauthenticated.status_code == 401 and unauthenticated.content == b""
    assert unauthenticated.headers["content-type"] == "application/problem+json"
    assert (await omni.client.head("/v1/tenants", headers=omni.auth(key))).status_code == 403
    assert (await omni.client.head("/v1/meters/nothing", headers=omni.auth(key))).status_code == 404
    post_only = await omni.client.head("/v1/events", headers=omni.auth(key))
    assert post_only.status_code == 405 and post_only.headers["allow"] == "POST"


async def test_a_watch_is_not_opened_by_head(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant()
    await omni.settle()
    head = await omni.client.head("/v1/meters/tokens/watch?window_size=DAY", headers=omni.auth(key))
    assert head.status_code == 405 and head.headers["allow"] == "GET" and head.content == b""
    assert omni.app.state.watches.count == 0


async def test_head_is_counted_as_head(omni: Omni) -> None:
    before = requests_counted("/healthz", "HEAD", "200")
    assert (await omni.client.head("/healthz")).status_code == 200
    assert requests_counted("/healthz", "HEAD", "200") - before == 1
