"""The OpenAPI document tells a client generator everything: who may call each operation, and
every answer it can get, errors as problem+json. Checked here against the document itself; the
schemathesis runs check the server against it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import ADMIN, Omni

PROBLEM = {"$ref": "#/components/schemas/Problem"}
QUOTA_EXCEEDED = {"$ref": "#/components/schemas/QuotaExceeded"}
CONSUME_FORBIDDEN = {"$ref": "#/components/schemas/ConsumeForbidden"}
CONSUME = "/v1/quotas/{meter}/consume"


@pytest.fixture
async def document(omni: Omni) -> dict[str, Any]:
    response = await omni.client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()]


async def test_every_v1_operation_needs_the_bearer_key(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: the admin's or a tenant's (`omni_...`)",
    }
    for path, method, op in operations(document):
        if path.startswith("/v1/webhooks/"):  # the sender's signature authenticates it, not a key
            assert op["security"] == [] and "401" not in op["responses"], (method, path)
        elif path.startswith("/v1/"):
            assert op["security"] == [{"bearer": []}], (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)
        else:
            assert "401" not in op["responses"] or path == "/metrics", (method, path)


async def test_every_error_is_problem_json_and_every_answer_is_documented(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and set(schemas["Problem"]["required"]) == {"title", "status"}
    for path, method, op in operations(document):
        responses = op["responses"]
        for status, response in responses.items():
            if int(status) >= 400:
                schema = (
                    {"429": QUOTA_EXCEEDED, "403": CONSUME_FORBIDDEN}.get(status, PROBLEM)
                    if (path, method) == (CONSUME, "post")
                    else PROBLEM
                )
                assert response["content"] == {"application/problem+json": {"schema": schema}}, (method, path, status)
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in op:
            assert {"400", "413", "415", "422"} <= set(responses), (method, path)
            assert "application/json" in responses["415"]["description"], (method, path)
        if path not in ("/healthz", "/metrics"):
            assert "503" in responses, (method, path)


async def test_unsupported_methods_name_every_method_of_the_path(omni: Omni) -> None:
    admin = omni.auth(ADMIN)
    for path, allowed in (
        ("/v1/meters", "GET, HEAD, POST"),
        ("/v1/tenants", "GET, HEAD, POST"),
        ("/healthz", "GET, HEAD"),
        ("/v1/events", "POST"),
        ("/v1/meters/tokens/watch", "GET"),
    ):
        response = await omni.client.request("OPTIONS", path, headers=admin)
        assert response.status_code == 405, path
        assert response.headers["allow"] == allowed, path
        assert response.headers["content-type"] == "application/problem+json"


async def test_consume_429_declares_retry_after_and_the_members_it_sends(omni: Omni, document: dict[str, Any]) -> None:
    answer = document["paths"][CONSUME]["post"]["responses"]["429"]
    assert answer["headers"]["Retry-After"] == {
        "description": "Seconds until the quota's period ends",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
    schema = document["components"]["schemas"]["QuotaExceeded"]
    members = {"meter", "limit", "used", "period", "period_end"}
    assert members <= set(schema["required"]) and set(schema["properties"]) >= {"type", "title", "status", "detail"}
    # What the server sends: exactly the documented members, and the header.
    await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
    plan = {"entitlements": [{"meter": "tokens", "limit": 5, "period": "DAY"}]}
    assert (await omni.client.put("/v1/plans/pro", json=plan, headers=omni.auth(ADMIN))).status_code == 201
    _, key = await omni.tenant(plan="pro")
    await omni.settle()
    body = {"amount": 6, "idempotency_key": "k"}
    refused = await omni.client.post("/v1/quotas/tokens/consume", json=body, headers=omni.auth(key))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    sent = refused.json()
    assert set(schema["required"]) <= set(sent) <= set(schema["properties"]), sent
    assert (sent["meter"], sent["limit"], sent["used"]) == ("tokens", 5, 0)


async def test_limits_and_amounts_are_numbers_in_the_schema(omni: Omni, document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for model, field in (("ConsumeBody", "amount"), ("Entitlement", "limit"), ("QuotaOverrideBody", "limit")):
        declared = schemas[model]["properties"][field]
        assert declared["type"] == "number" and "anyOf" not in declared, (model, declared)
    # As validated: a string is refused, though a Decimal field would take one.
    _, key = await omni.tenant()
    body = {"amount": "1", "idempotency_key": "k"}
    assert (await omni.client.post("/v1/quotas/tokens/consume", json=body, headers=omni.auth(key))).status_code == 422


async def test_answers_that_point_at_what_they_made_declare_location(omni: Omni, document: dict[str, Any]) -> None:
    """Each route that sets `Location` says so in the document (a generated client reads it), and the
    header is sent."""
    for path, method, status in (
        ("/v1/gdpr/requests", "post", "202"),
        ("/v1/gdpr/breaches", "post", "201"),
        ("/v1/admin/replays", "post", "202"),
    ):
        answer = document["paths"][path][method]["responses"][status]
        assert answer["headers"]["Location"]["required"] is True, (path, answer)
    _, key = await omni.tenant()
    sent = await omni.client.post("/v1/gdpr/requests", json={"subject": "cust-1", "kind": "access"}, headers=omni.auth(key))
    assert sent.status_code == 202 and sent.headers["location"] == f"/v1/gdpr/requests/{sent.json()['id']}"


async def test_head_metrics_documents_the_answers_get_has(document: dict[str, Any]) -> None:
    """HEAD /metrics answers 401 without OMNI_METRICS_TOKEN when one is set, and 404 with
    OMNI_API_METRICS=false, as GET does; its operation listed only 200 and 431, so a client
    generated from the document, or schemathesis, was told those answers could not happen."""
    get, head = document["paths"]["/metrics"]["get"], document["paths"]["/metrics"]["head"]
    assert {"401", "404"} <= set(head["responses"])
    assert set(head["responses"]) == set(get["responses"])
    assert head["security"] == get["security"]


async def test_the_meter_answers_name_their_types(document: dict[str, Any]) -> None:
    """A generated client gets typed meters and query answers: the list's items were any object, and
    the answer's aggregation and window size any text."""
    schemas = document["components"]["schemas"]
    assert schemas["MeterList"]["properties"]["data"]["items"] == {"$ref": "#/components/schemas/MeterDefinition"}
    result = schemas["MeterQueryResult"]["properties"]
    assert result["aggregation"] == {"$ref": "#/components/schemas/Aggregation"}
    assert {"$ref": "#/components/schemas/WindowSize"} in result["window_size"]["anyOf"]
