"""TracingMiddleware without FastAPI's own span (its telemetry off): it opens the server span itself."""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from api import tracing

CALLER = "6bf92f3577b34da6a3ce929d0e0e4738"


async def test_without_fastapis_span_the_middleware_opens_one_in_the_callers_trace() -> None:
    tracing.ensure_provider()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    app = FastAPI(telemetry={"tracing": False})
    tracing.install(app)

    @app.get("/things/{thing}")
    async def thing(request: Request) -> dict[str, str | None]:
        return {"trace_id": request.state.trace_id, "traceparent": request.state.traceparent}

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            response = await client.get("/things/1", headers={"traceparent": f"00-{CALLER}-00f067aa0ba902b7-01"})
        spans = [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == CALLER]
    finally:
        exporter.shutdown()
    assert response.status_code == 200
    assert [(s.kind, s.name) for s in spans] == [(SpanKind.SERVER, "GET /things/{thing}")]
    body = response.json()
    assert body["trace_id"] == CALLER
    assert response.headers["traceparent"] == body["traceparent"]
    assert body["traceparent"].split("-")[2] == format(spans[0].context.span_id, "016x")


async def test_an_invalid_incoming_traceparent_is_ignored_and_a_new_trace_started() -> None:
    """W3C trace context: a traceparent with an all-zero trace or parent id, or version ff, is not
    refused; the server starts a trace of its own (issue 11, item 7)."""
    tracing.ensure_provider()
    app = FastAPI(telemetry={"tracing": False})
    tracing.install(app)

    @app.get("/things")
    async def things(request: Request) -> dict[str, str | None]:
        return {"trace_id": request.state.trace_id, "traceparent": request.state.traceparent}

    invalid = [
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        f"00-{CALLER}-" + "0" * 16 + "-01",
        f"ff-{CALLER}-00f067aa0ba902b7-01",
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for header in invalid:
            response = await client.get("/things", headers={"traceparent": header})
            assert response.status_code == 200
            body = response.json()
            version, trace_id, span_id, _ = body["traceparent"].split("-")
            assert version == "00" and trace_id == body["trace_id"] != CALLER
            assert trace_id != "0" * 32 and span_id != "0" * 16
