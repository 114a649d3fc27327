"""A query holds the route's own parameters, each as often as it may come, on every route under /v1/.
A parameter the route does not take is refused (422 `unknown-parameter` at its place): FastAPI alone
ignores it, and `GET /v1/invoices/upcoming?as_of=...` answered today's draft as if it were the past's.
A parameter that takes one value, sent twice, is refused (422 `repeated-parameter`): FastAPI alone
takes the last, and `?window_size=HOUR&window_size=DAY` was answered by days for a client that meant
hours. Parameters that take a list may repeat."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni, embedded_settings, served
from tests.e2e.test_access_matrix import EXPECTED
from tests.e2e.test_bad_input import assert_problem

TOKENS = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
TOKENS_BY_MODEL = TOKENS | {"group_by": {"model": "$.data.model"}}


def operations(document: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """Each operation of the document with its query parameters (the check comes before the body is
    read: a POST or PUT is refused before anything of it is done)."""
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            query = [p for p in [*item.get("parameters", []), *operation.get("parameters", [])] if p["in"] == "query"]
            found.append((method, path, query))
    return found


def caller_of(method: str, path: str, tenant_key: str) -> str:
    """A key the operation serves (README's route table): the admin's, or a tenant's on a tenant-only
    route, which refuses the admin (403) before it reads the query (api/roles.py)."""
    admin_answer = EXPECTED.get((method.upper(), path), (None, None, None))[2]
    return tenant_key if admin_answer == 403 else ADMIN


def takes_many(parameter: dict[str, Any]) -> bool:
    schema = parameter.get("schema", {})
    kinds = [schema, *schema.get("anyOf", [])]
    return parameter.get("style") == "deepObject" or any(kind.get("type") == "array" for kind in kinds)


async def test_every_one_value_parameter_of_the_document_is_refused_when_repeated(tmp_path: Path) -> None:
    async with served(embedded_settings(tmp_path / "data")) as omni:
        document = (await omni.client.get("/openapi.json")).json()
        _, tenant_key = await omni.tenant()
        checked = 0
        for method, path, query in operations(document):
            url = re.sub(r"\{[^}]+\}", "x", path)
            for parameter in (p for p in query if not takes_many(p)):
                name = parameter["name"]
                key = caller_of(method, path, tenant_key)
                response = await omni.client.request(
                    method.upper(), url, params=[(name, "1"), (name, "2")], headers=omni.auth(key)
                )
                body = assert_problem(response, 422)
                assert body["type"].endswith("/repeated-parameter"), (method, path, name, body)
                assert body["errors"] == [
                    {"location": f"query.{name}", "reason": f"{name} takes one value; it was sent more than once"}
                ]
                checked += 1
        # The routes that take one-value parameters: meters' query and watch, audit, notifications,
        # quotas, invoices, SLOs, GDPR (POST /v1/gdpr/requests and PUT /v1/gdpr/retention among them),
        # webhooks' deliveries...
        assert checked >= 40, checked


async def test_every_operation_under_v1_refuses_a_parameter_it_does_not_take(tmp_path: Path) -> None:
    async with served(embedded_settings(tmp_path / "data")) as omni:
        document = (await omni.client.get("/openapi.json")).json()
        _, tenant_key = await omni.tenant()
        checked = 0
        for method, path, query in operations(document):
            if not path.startswith("/v1/"):
                continue
            url = re.sub(r"\{[^}]+\}", "x", path)
            key = caller_of(method, path, tenant_key)
            response = await omni.client.request(method.upper(), url, params={"omni_unknown": "1"}, headers=omni.auth(key))
            body = assert_problem(response, 422)
            assert body["type"].endswith("/unknown-parameter"), (method, path, body)
            (error,) = body["errors"]
            assert error["location"] == "query.omni_unknown", (method, path, body)
            for parameter in query:  # the reason names what the operation takes
                assert parameter["name"] in error["reason"], (method, path, parameter["name"], error)
            checked += 1
        assert checked >= 60, checked
        outside = await omni.client.get("/healthz", params={"omni_unknown": "1"})
        assert outside.status_code == 200, "probes, documents and metrics are left alone"


async def test_a_deep_object_filter_takes_any_key_and_nothing_else_of_its_name(omni: Omni) -> None:
    await omni.meter(**TOKENS_BY_MODEL)
    _, key = await omni.tenant()
    await omni.settle()
    url = "/v1/meters/tokens/query"
    assert (await omni.client.get(url, params={"filter_group_by[model]": "a"}, headers=omni.auth(key))).status_code == 200
    for name in ("filter_group_by", "filter_group_by[model", "filterGroupBy[model]", "as_of_x"):
        body = assert_problem(await omni.client.get(url, params={name: "a"}, headers=omni.auth(key)), 422)
        assert body["type"].endswith("/unknown-parameter") and body["errors"][0]["location"] == f"query.{name}", body
    watch = await omni.client.get("/v1/meters/tokens/watch", params={"as_of": "2026-12-01T00:00:00Z"}, headers=omni.auth(key))
    assert assert_problem(watch, 422)["type"].endswith("/unknown-parameter"), "a watch follows the live views: no as_of"
    upcoming = await omni.client.get("/v1/invoices/upcoming", params={"as_of": "2026-12-01T00:00:00Z"}, headers=omni.auth(key))
    assert assert_problem(upcoming, 422)["errors"][0]["location"] == "query.as_of"


async def test_a_repeated_window_is_refused_and_repeated_lists_are_answered(omni: Omni) -> None:
    await omni.meter(**TOKENS_BY_MODEL)
    _, key = await omni.tenant()
    events = [cloud_event(f"e{i}", data={"tokens": i + 1, "model": model}) for i, model in enumerate(["a", "b", "c"])]
    assert (await omni.send(key, events)).status_code == 202
    await omni.settle()
    url = "/v1/meters/tokens/query"

    twice = await omni.client.get(url, params=[("window_size", "HOUR"), ("window_size", "DAY")], headers=omni.auth(key))
    body = assert_problem(twice, 422)
    assert body["type"].endswith("/repeated-parameter")
    assert [error["location"] for error in body["errors"]] == ["query.window_size"]
    # Two at once are both named.
    both = [("from", "2026-01-01T00:00:00Z"), ("window_size", "DAY"), ("from", "2026-01-02T00:00:00Z"), ("window_size", "DAY")]
    body = assert_problem(await omni.client.get(url, params=both, headers=omni.auth(key)), 422)
    assert sorted(error["location"] for error in body["errors"]) == ["query.from", "query.window_size"]

    # A list parameter and a filter may repeat: any of the values counts.
    listed = await omni.client.get(
        url,
        params=[("group_by", "model"), ("group_by", "subject"), ("filter_group_by[model]", "a"), ("filter_group_by[model]", "c")],
        headers=omni.auth(key),
    )
    assert listed.status_code == 200, listed.text
    assert sorted((row["group_by"]["model"], int(row["value"])) for row in listed.json()["data"]) == [("a", 1), ("c", 3)]
    # Once each, the same parameters are answered.
    once = await omni.client.get(url, params={"window_size": "DAY"}, headers=omni.auth(key))
    assert once.status_code == 200, once.text


async def test_a_consume_with_a_parameter_is_refused_and_counts_nothing(omni: Omni) -> None:
    """Consume's own fast layer (api/lean_consume.py) passes a query string to FastAPI, which refuses
    it: a gateway asking `?dry_run=true` must not be charged for what it took for a dry run."""
    await omni.meter(**TOKENS)
    _, key = await omni.tenant()
    await omni.settle()
    body = {"amount": 5, "idempotency_key": "dry"}
    refused = await omni.client.post("/v1/quotas/tokens/consume", params={"dry_run": "true"}, json=body, headers=omni.auth(key))
    assert assert_problem(refused, 422)["errors"][0]["location"] == "query.dry_run"
    counted = await omni.client.post("/v1/quotas/tokens/consume", json=body, headers=omni.auth(key))
    assert counted.status_code == 200 and counted.json()["used"] == 5, "the refused call counted nothing"
