"""Bad input: a clear 4xx problem+json, never a 500, and nothing already accepted is lost."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import orjson
import pytest

from api.app import create_app
from omni.bootstrap import build
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH, SINGLE, Omni, embedded_settings
from tests.e2e.test_access_matrix import EXPECTED


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"]
    return body


async def test_malformed_and_misaddressed_events(omni: Omni) -> None:
    _, key = await omni.tenant()
    auth = omni.auth(key)
    post = omni.client.post
    assert_problem(await post("/v1/events", content=b"{not json", headers={**auth, "Content-Type": SINGLE}), 400)
    assert_problem(await post("/v1/events", content=b"{}", headers={**auth, "Content-Type": "text/plain"}), 415)
    assert_problem(await post("/v1/events", content=b"[]", headers={**auth, "Content-Type": BATCH}), 422)
    assert_problem(await post("/v1/events", content=b"{}", headers={**auth, "Content-Type": BATCH}), 400)
    assert_problem(await post("/v1/events", content=b"[1]", headers={**auth, "Content-Type": SINGLE}), 400)
    missing = assert_problem(await post("/v1/events", content=b"{}", headers={**auth, "Content-Type": SINGLE}), 422)
    reasons = " ".join(missing["errors"][0]["reasons"])
    for field in ("specversion", "id", "source", "type", "subject"):
        assert field in reasons


async def test_a_batch_with_bad_events_is_refused_whole(omni: Omni) -> None:
    _, key = await omni.tenant()
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    good = [cloud_event(f"g{i}", type_="call") for i in range(3)]
    bad_index_1 = {"specversion": "0.3", "id": "x", "source": "s", "type": "call", "subject": "u"}
    bad_index_3 = cloud_event("old", type_="call") | {"time": "2000-01-01T00:00:00Z"}
    response = await omni.send(key, [good[0], bad_index_1, good[1], bad_index_3, good[2]])
    body = assert_problem(response, 422)
    assert [e["index"] for e in body["errors"]] == [1, 3]
    assert body["errors"][1]["id"] == "old"
    await omni.settle()
    assert await omni.query(key, "calls") == []
    # The good events were not remembered as seen: sent alone, they are accepted.
    assert (await omni.send(key, good)).json()["accepted"] == 3


async def test_text_with_a_nul_character_is_refused_everywhere_and_the_fold_goes_on(omni: Omni) -> None:
    # The views cannot store NUL (PostgreSQL text): admitted, one such event would stop its
    # partition's fold for every tenant on it.
    tenant_id, key = await omni.tenant()
    admin = omni.auth(ADMIN)
    post = omni.client.post
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    body = assert_problem(await omni.send(key, [cloud_event("ok", type_="call"), cloud_event("e\x00", type_="call")]), 422)
    assert [e["index"] for e in body["errors"]] == [1] and "NUL" in " ".join(body["errors"][0]["reasons"])
    assert_problem(await omni.send(key, [cloud_event("d", type_="call", data={"model": "m\x00"})]), 422)
    assert_problem(await post("/v1/tenants", json={"name": "a\x00b", "plan": "free"}, headers=admin), 422)
    assert_problem(await post(f"/v1/tenants/{tenant_id}/keys", json={"label": "ci\x00"}, headers=admin), 422)
    meter = {"slug": "nul", "event_type": "call\x00", "aggregation": "COUNT"}
    assert_problem(await post("/v1/meters", json=meter, headers=admin), 422)
    # A literal backslash-u in text is no NUL: accepted.
    assert (await omni.send(key, [cloud_event("x", type_="call", subject="\\u0000")])).json()["accepted"] == 1
    await omni.settle()
    assert sum(row["value"] for row in await omni.query(key, "calls")) == 1


async def test_a_nul_in_the_url_names_nothing_on_every_route(omni: Omni) -> None:
    """No stored text holds a NUL, so `%00` in a path names nothing (404; 422 for the name a PUT
    would make) and in a query is refused (422), on every route and for every caller, before a store is read with it: PostgreSQL refuses
    such a parameter with an error, and nine routes answered it with a 500 in Kafka mode."""
    tenant_id, key = await omni.tenant()
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    paths = omni.app.openapi()["paths"]
    named = [(m.upper(), p) for p, item in paths.items() for m in item if "{" in p and not p.startswith("/v1/webhooks/")]
    assert len(named) > 20
    for method, template in named:
        owner, _, admin = EXPECTED[method, template]
        for caller, refused in ((ADMIN, admin == 403), (key, owner == 403)):
            path = re.sub(r"\{\w+(:\w+)?\}", "a%00", template)
            body = {"reason": "x"} if method == "POST" and "/invoices/" in path else None
            response = await omni.client.request(method, path, json=body, headers=omni.auth(caller))
            # A PUT's last segment is the name it would make (a plan's slug, a data class's type): 422,
            # unless a resource it is about is named too (`/v1/tenants/a%00/quotas/a%00`): none is, 404.
            # A caller the route refuses is refused first, whatever its path holds (api/roles.py).
            makes = method == "PUT" and template.endswith("}") and template.count("{") == 1
            assert_problem(response, 403 if refused else 422 if makes else 404)
    for path, params, caller in [
        ("/v1/tenants", {"after": "a\x00"}, ADMIN),
        (f"/v1/tenants/{tenant_id}", {"unknown": "\x00"}, key),
        ("/v1/invoices", {"before": "a~b\x00"}, key),
        ("/v1/meters/calls/query", {"subject": "u\x00", "group_by": "subject"}, key),
        ("/v1/quotas", {"tenant": "\x00"}, ADMIN),
    ]:
        body = assert_problem(await omni.client.get(path, params=params, headers=omni.auth(caller)), 422)
        assert [e["location"] for e in body["errors"]] == [f"query.{next(iter(params))}"], body


async def test_meter_queries_refuse_bad_ranges_and_unknowns(omni: Omni) -> None:
    _, key = await omni.tenant()
    await omni.meter(
        slug="tokens",
        event_type="inference",
        aggregation="SUM",
        value_property="$.data.tokens",
        group_by={"model": "$.data.model"},
    )
    await omni.settle()
    get = omni.client.get
    auth = omni.auth(key)
    assert_problem(await get("/v1/meters/nope/query", headers=auth), 404)
    assert_problem(await get("/v1/meters/tokens/query", params={"window_size": "WEEK"}, headers=auth), 422)
    assert_problem(await get("/v1/meters/tokens/query", params={"from": "yesterday"}, headers=auth), 422)
    assert_problem(await get("/v1/meters/tokens/query", params={"from": "2026-01-01T00:00:30Z"}, headers=auth), 422)
    assert_problem(
        await get("/v1/meters/tokens/query", params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, headers=auth),
        422,
    )
    assert_problem(await get("/v1/meters/tokens/query", params={"from": "2026-01-01T00:00:00"}, headers=auth), 422)
    assert_problem(await get("/v1/meters/tokens/query", params={"group_by": "colour"}, headers=auth), 422)
    # An empty filter or dimension would be ignored, answering every subject's or group's usage.
    for params, place in (
        ({"subject": ""}, "query.subject"),
        ([("subject", "user-1"), ("subject", "")], "query.subject"),
        ({"group_by": ""}, "query.group_by"),
        ({"group_by": "model,"}, "query.group_by"),
        ({"group_by": ","}, "query.group_by"),
    ):
        for route in ("query", "watch"):
            problem = assert_problem(await get(f"/v1/meters/tokens/{route}", params=params, headers=auth), 422)
            assert [e["location"] for e in problem["errors"]] == [place], (route, params, problem)
    assert_problem(await get("/v1/meters/tokens/query", headers=omni.auth(ADMIN)), 403)


async def test_meter_definitions_are_validated(omni: Omni) -> None:
    admin = omni.auth(ADMIN)
    post = omni.client.post
    assert_problem(await post("/v1/meters", json={"slug": "x", "event_type": "t", "aggregation": "SUM"}, headers=admin), 422)
    assert_problem(
        await post("/v1/meters", json={"slug": "Bad Slug", "event_type": "t", "aggregation": "COUNT"}, headers=admin), 422
    )
    assert_problem(
        await post(
            "/v1/meters", json={"slug": "x", "event_type": "t", "aggregation": "SUM", "value_property": "data.x"}, headers=admin
        ),
        422,
    )
    assert_problem(await post("/v1/meters", content=b"{", headers={**admin, "Content-Type": "application/json"}), 400)
    ok = {"slug": "x", "event_type": "t", "aggregation": "COUNT"}
    assert (await post("/v1/meters", json=ok, headers=admin)).status_code == 201
    assert_problem(await post("/v1/meters", json=ok, headers=admin), 409)


async def test_a_meter_definitions_reasons_are_each_at_its_place(omni: Omni) -> None:
    """A rule across fields names the field it refuses, as a field's own rule does: `body` alone
    told an admin neither which field nor which dimension."""
    admin = omni.auth(ADMIN)
    cases = [
        ({"aggregation": "SUM"}, [("body.value_property", "SUM meters need a value_property")]),
        (
            {"aggregation": "COUNT", "value_property": "$.data.n"},
            [("body.value_property", "COUNT meters take no value_property")],
        ),
        (
            {"aggregation": "COUNT", "group_by": {"subject": "$.data.s", "a b": "$.data.ab", "ok": "$.data.ok"}},
            [("body.group_by.subject", "group_by key 'subject' is reserved"), ("body.group_by.a b", "must be an identifier")],
        ),
    ]
    for fields, expected in cases:
        body = assert_problem(
            await omni.client.post("/v1/meters", json={"slug": "x", "event_type": "t", **fields}, headers=admin), 422
        )
        assert [error["location"] for error in body["errors"]] == [location for location, _ in expected], body
        assert all(reason in error["reason"] for error, (_, reason) in zip(body["errors"], expected, strict=True))


@pytest.fixture
async def small(tmp_path: Path):  # type: ignore[no-untyped-def]
    platform = build(embedded_settings(tmp_path / "data", max_body_bytes=4096, max_batch_events=5))
    app = create_app(platform=platform, background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://omni.test") as client:
            yield Omni(client, platform, app)


async def test_oversized_bodies_and_batches_get_413(small: Omni) -> None:
    _, key = await small.tenant()
    huge = cloud_event("h", data={"blob": "x" * 10_000})
    assert_problem(
        await small.client.post("/v1/events", content=orjson.dumps(huge), headers={**small.auth(key), "Content-Type": SINGLE}),
        413,
    )
    six = [cloud_event(f"e{i}") for i in range(6)]
    assert_problem(await small.send(key, six), 413)
    assert (await small.send(key, six[:5])).status_code == 202


async def test_the_log_being_down_gives_503_and_claims_nothing(omni: Omni) -> None:
    _, key = await omni.tenant()
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    await omni.settle()
    await omni.platform.log.close()
    refused = await omni.send(key, [cloud_event("during-outage", type_="call")])
    down = assert_problem(refused, 503)
    # The answer says what happened and that nothing was taken, and when to retry.
    assert down["type"] == "https://omni.dev/problems/log-unavailable"
    assert down["title"] == "Log unavailable"
    assert down["detail"] == "The event log cannot take events right now; nothing was accepted. Retry later."
    assert refused.headers["retry-after"] == "1"
    assert (await omni.client.get("/readyz")).status_code == 503
    await omni.platform.log.start()
    assert (await omni.client.get("/readyz")).status_code == 200
    # The retry after the outage is accepted: the failed attempt left no trace.
    retry = await omni.send(key, [cloud_event("during-outage", type_="call")])
    assert retry.json() == {
        "accepted": 1,
        "duplicates": 0,
        "results": [{"index": 0, "id": "during-outage", "status": "accepted"}],
    }
    await omni.settle()
    assert [row["value"] for row in await omni.query(key, "calls")] == [1]


async def test_whole_numbers_in_bodies_take_json_integers_only(omni: Omni) -> None:
    """A boolean or a numeric string is refused where a body takes a whole number (a walkthrough
    found `"personal_data_days": true` set a 1-day shredding period), as plans' limits and SLOs'
    numbers already were, and so is a fraction; a number with no fraction (`30.0`) is a whole
    number, as JSON Schema's "integer" says (schemathesis sent one); and a breach is not dated
    before the GDPR applied."""
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    tenant_id, key = await omni.tenant()
    admin, tenant = omni.auth(ADMIN), omni.auth(key)
    refused = [
        ("PUT", "/v1/gdpr/retention", tenant, {"personal_data_days": True}, "body.personal_data_days"),
        ("PUT", "/v1/gdpr/retention", tenant, {"personal_data_days": "30"}, "body.personal_data_days"),
        ("PUT", "/v1/gdpr/retention", tenant, {"personal_data_days": 30.5}, "body.personal_data_days"),
        (
            "PUT",
            "/v1/plans/strict",
            admin,
            {"entitlements": [{"meter": "calls", "limit": 5, "period": "DAY", "thresholds": [True, 100]}]},
            "body.entitlements.0.thresholds.0",
        ),
        (
            "PUT",
            "/v1/plans/strict",
            admin,
            {"entitlements": [{"meter": "calls", "limit": 5, "period": "DAY", "thresholds": ["80"]}]},
            "body.entitlements.0.thresholds.0",
        ),
        (
            "PUT",
            f"/v1/tenants/{tenant_id}/quotas/calls",
            admin,
            {"limit": 5, "period": "DAY", "thresholds": [50.5]},
            "body.thresholds.0",
        ),
        (
            "POST",
            "/v1/gdpr/breaches",
            admin,
            {"detected_at": "2026-12-01T00:00:00Z", "scope": "x", "subjects": True},
            "body.subjects",
        ),
        (
            "POST",
            "/v1/gdpr/breaches",
            admin,
            {"detected_at": "2026-12-01T00:00:00Z", "scope": "x", "subjects": "12"},
            "body.subjects",
        ),
        ("POST", "/v1/gdpr/breaches", admin, {"detected_at": "1970-01-01T00:00:00Z", "scope": "x"}, None),
    ]
    for method, path, headers, body, place in refused:
        problem = assert_problem(await omni.client.request(method, path, json=body, headers=headers), 422)
        if place is not None:
            assert [e["location"] for e in problem["errors"]] == [place], (path, body, problem)
    assert (await omni.client.put("/v1/gdpr/retention", json={"personal_data_days": 30}, headers=tenant)).status_code == 201
    again = await omni.client.put("/v1/gdpr/retention", json={"personal_data_days": 31.0}, headers=tenant)
    assert (again.status_code, again.json()["personal_data_days"]) == (200, 31), again.text
    override = {"limit": 5, "period": "DAY", "thresholds": [50.0, 80]}
    assert (await omni.client.put(f"/v1/tenants/{tenant_id}/quotas/calls", json=override, headers=admin)).status_code == 204
    breaches = await omni.client.get("/v1/gdpr/breaches", headers=admin)
    assert breaches.json()["data"] == [], "nothing was recorded"


async def test_a_binary_mode_attribute_sent_twice_is_refused_and_nothing_is_accepted(omni: Omni) -> None:
    _, key = await omni.tenant()
    base = [("ce-specversion", "1.0"), ("ce-source", "s"), ("ce-type", "inference"), ("ce-subject", "u1")]
    sent = [*omni.auth(key).items(), *base, ("ce-id", "b6"), ("ce-id", "b7"), ("Content-Type", "application/json")]
    problem = assert_problem(await omni.client.post("/v1/events", content=b'{"tokens": 2}', headers=sent), 422)
    assert "ce-id is sent more than once" in problem["errors"][0]["reasons"][0], problem
    once = [*omni.auth(key).items(), *base, ("ce-id", "b6"), ("Content-Type", "application/json")]
    accepted = await omni.client.post("/v1/events", content=b'{"tokens": 2}', headers=once)
    assert accepted.status_code == 202 and accepted.json()["accepted"] == 1, "b6 was not taken before"


async def test_a_refused_events_id_is_named_whatever_the_mode(omni: Omni) -> None:
    """Each bad event's `index` and `id` (README): binary mode's and data_base64's refusals named no id."""
    _, key = await omni.tenant()
    base = [("ce-specversion", "1.0"), ("ce-source", "s"), ("ce-type", "inference"), ("ce-subject", "u1")]
    sent = [*omni.auth(key).items(), *base, ("ce-id", "b%209"), ("ce-data", "x"), ("Content-Type", "application/json")]
    problem = assert_problem(await omni.client.post("/v1/events", content=b"{}", headers=sent), 422)
    assert [(e["index"], e["id"]) for e in problem["errors"]] == [(0, "b 9")], problem
    event = {"specversion": "1.0", "id": "d64", "source": "s", "type": "inference", "subject": "u1", "data_base64": "%%%"}
    problem = assert_problem(
        await omni.client.post("/v1/events", content=orjson.dumps([event]), headers={**omni.auth(key), "Content-Type": BATCH}),
        422,
    )
    assert [(e["index"], e["id"]) for e in problem["errors"]] == [(0, "d64")], problem


async def test_an_empty_page_cursor_is_refused_as_the_schema_says(omni: Omni) -> None:
    """A cursor is never empty: `?before=` was 422 while the document declared any string, so a
    schema-driven client sent it (schemathesis: a response the schema's parameters do not explain)."""
    tenant_id, key = await omni.tenant()
    endpoint = await omni.client.post("/v1/webhook-endpoints", json={"url": "https://93.184.215.14/hook"}, headers=omni.auth(key))
    assert endpoint.status_code == 201, endpoint.text
    document = (await omni.client.get("/openapi.json")).json()
    for path, name, caller in (
        ("/v1/notifications", "before", key),
        ("/v1/invoices", "before", key),
        (f"/v1/webhook-endpoints/{endpoint.json()['id']}/deliveries", "before", key),
        ("/v1/tenants", "after", ADMIN),
        (f"/v1/tenants/{tenant_id}/keys", "after", key),
    ):
        response = await omni.client.get(path, params={name: ""}, headers=omni.auth(caller))
        assert response.status_code == 422, (path, response.text)
        assert [e["location"] for e in response.json()["errors"]] == [f"query.{name}"], response.text
        template = re.sub(r"/(webhook-endpoints|tenants)/[^/]+/", r"/\1/{id}/", path)
        template = template.replace("webhook-endpoints/{id}", "webhook-endpoints/{endpoint_id}").replace(
            "tenants/{id}", "tenants/{tenant_id}"
        )
        (declared,) = [p for p in document["paths"][template]["get"]["parameters"] if p["name"] == name]
        assert '"minLength": 1' in json.dumps(declared["schema"]), declared
