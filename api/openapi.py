"""The OpenAPI document as clients and generators need it: who may call, and every answer.

FastAPI documents each route's success and a JSON 422 it never sends (errors here are
`application/problem+json`, api/problems.py). This completes the document from what every route
shares, so no route has to repeat it:

- the bearer scheme, required on every /v1 operation (`/metrics` takes an optional token);
- the errors each operation can answer, as problem+json: 401 and 403 under /v1; 404 where the
  path names a resource; 400, 408, 413 and 415 where there is a body; 409 for commands; 422
  where anything is validated; 431 everywhere; 503 wherever a store or the log is read;
- consume's 429 with its `Retry-After` and the members its problem carries (QuotaExceeded), and its 403
  with a suspended tenant's (ConsumeForbidden).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.edge import WEBHOOKS_PREFIX
from api.problems import MEDIA_TYPE
from omni.settings import Settings
from schemas.api import Problem
from schemas.billing import invoice_line_schemas
from schemas.cloudevents import BATCH, STRUCTURED, documented_schema
from schemas.plans import ConsumeForbidden, QuotaExceeded

BEARER = "bearer"
METRICS_TOKEN = "metricsToken"
UNGUARDED = {"/healthz", "/metrics"}  # read no store: never 503
COMMAND_METHODS = {"post", "put", "patch", "delete"}

DESCRIPTIONS = {
    "400": "Malformed JSON or batch",
    "401": "No valid API key (the body is not read)",
    "403": "The key's role may not call this operation",
    "404": "No such resource for this caller (another tenant's resource answers 404 too)",
    "408": "The headers or the body arrived too slowly",
    "409": "Conflicts with the current state (already defined, changed concurrently, a limit on what the owner holds reached)",
    "413": "The body or the batch is larger than allowed",
    "415": "The body is not in a media type the operation takes (a JSON body: `application/json` or `application/*+json`)",
    "422": "The request is well-formed but invalid; `errors` lists each reason",
    "429": "Too many such requests lately (a tenant's events a second, an SLO's revisions, a tenant's watches): nothing was done; retry after `Retry-After` seconds",
    "431": "The request's headers are larger than allowed",
    "503": "A dependency (the log, the event store, the views) is unavailable; retry later",
}


def _problem_response(status: str) -> dict[str, Any]:
    return {
        "description": DESCRIPTIONS.get(status, "An error, as problem details"),
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _errors_of(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    protected = path.startswith("/v1/") and not path.startswith(WEBHOOKS_PREFIX)
    has_body = "requestBody" in operation
    has_params = bool(operation.get("parameters")) or has_body
    statuses = ["431"]
    if protected:
        statuses += ["401", "403"]
    if "{" in path:
        statuses.append("404")
    if has_body:
        statuses += ["400", "408", "413", "415"]
    if protected and method in COMMAND_METHODS:
        statuses.append("409")
    if has_params:
        statuses.append("422")
    if path not in UNGUARDED:
        statuses.append("503")
    return statuses


INGEST = ("/v1/events", "post")
CONSUME = ("/v1/quotas/{meter}/consume", "post")
# The answers that say in `Location` where what they made is (api.routes: a job or a request to poll,
# a breach to read back).
LOCATED = {
    ("/v1/gdpr/requests", "post", "202"): "The request's status and steps",
    ("/v1/gdpr/breaches", "post", "201"): "The breach",
    ("/v1/admin/replays", "post", "202"): "The replay job's state and progress",
}


def quota_exceeded() -> dict[str, Any]:
    """Consume's 429: what api.routes.quotas.consume raises, headers and members."""
    return {
        "description": "A hard limit refuses the amount: nothing was recorded; retry once the period ends",
        "headers": {
            "Retry-After": {
                "description": "Seconds until the quota's period ends",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/QuotaExceeded"}}},
    }


def consume_forbidden() -> dict[str, Any]:
    """Consume's 403: its tenant suspended (POST /v1/tenants/{id}/suspend), or an admin's key."""
    return {
        "description": "The tenant is suspended (`tenant-suspended`: nothing was recorded), or the key is not a tenant's",
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ConsumeForbidden"}}},
    }


def ingest_body(max_batch_events: int) -> dict[str, Any]:
    """POST /v1/events reads its body itself (one parse, no model per event), so FastAPI cannot see
    it. Documented as the batch alone: generators (openapi-python-client among them) write broken
    code for one body in several media types, and a batch of one is one event."""
    event = {"$ref": "#/components/schemas/CloudEvent"}
    return {
        "required": True,
        "description": (
            f"A batch of 1 to {max_batch_events} CloudEvents (JSON format). Also taken: one event as "
            f"`{STRUCTURED}` (structured mode), either shape as `application/json`, and binary mode "
            "(`ce-*` headers, the data as the body)."
        ),
        "content": {BATCH: {"schema": {"type": "array", "items": event, "minItems": 1, "maxItems": max_batch_events}}},
    }


def complete(document: dict[str, Any], *, max_batch_events: int = 1000) -> dict[str, Any]:
    """Add security, the ingest body and the shared error answers to FastAPI's document (in place)."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["CloudEvent"] = documented_schema()
    path, method = INGEST
    if method in document.get("paths", {}).get(path, {}):
        document["paths"][path][method]["requestBody"] = ingest_body(max_batch_events)
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas["QuotaExceeded"] = QuotaExceeded.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas["ConsumeForbidden"] = ConsumeForbidden.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(invoice_line_schemas("#/components/schemas/{model}"))
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "description": "An API key: the admin's or a tenant's (`omni_...`)"},
        METRICS_TOKEN: {"type": "http", "scheme": "bearer", "description": "OMNI_METRICS_TOKEN, when it is set"},
    }
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            declared = [status for status in responses if status.isdigit() and int(status) >= 400]
            for status in {*_errors_of(path, method, operation), *declared}:
                responses[status] = _problem_response(status)
            if (path, method) == CONSUME:
                responses["429"] = quota_exceeded()
                responses["403"] = consume_forbidden()
            for status, response in responses.items():
                if (where := LOCATED.get((path, method, status))) is not None:
                    response.setdefault("headers", {})["Location"] = {
                        "description": f"{where}: a path on this API",
                        "required": True,
                        "schema": {"type": "string"},
                    }
            operation["responses"] = dict(sorted(responses.items()))
            if path.startswith(WEBHOOKS_PREFIX):
                operation["security"] = []  # the sender's signature authenticates it (api/routes/webhooks.py)
            elif path.startswith("/v1/"):
                operation["security"] = [{BEARER: []}]
            elif path == "/metrics":
                operation["security"] = [{}, {METRICS_TOKEN: []}]
    return document


DESCRIPTION = (
    "Errors are RFC 9457 problem details. A POST may carry an `Idempotency-Key` header (1 to 255 printable "
    "ASCII characters without spaces, the caller's own): sent again with it, a request that succeeded gets its first answer "
    "again (`Idempotent-Replayed: true`) for a day and does nothing twice; the key with another request is "
    "422 `idempotency-key-reused`, and while its first request runs, 409 `idempotency-key-in-progress`. "
    "POST /v1/events, consume and Stripe's webhook have keys of their own (the event's id and source, "
    "`idempotency_key`, Stripe's event id). It is not listed per operation, as in Stripe's own document."
)


def install(app: FastAPI, settings: Settings) -> None:
    """`app.openapi()` builds the completed document once and keeps it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title, version=app.version, summary=app.summary, description=DESCRIPTION, routes=app.routes
                ),
                max_batch_events=settings.max_batch_events,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
