"""TracingMiddleware opens the request's server span (FastAPI's own telemetry is off): recorded once
something receives spans, a non-recording one with the same ids until then."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from api import tracing

CALLER = "6bf92f3577b34da6a3ce929d0e0e4738"


async def test_once_something_receives_spans_the_middleware_records_one_in_the_callers_trace() -> None:
    """FastAPI's own telemetry off (as the app has it): the middleware's span is the request's, recorded
    with its route, method, path and status once a collector listens."""
    tracing.ensure_provider()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    app = FastAPI(telemetry=tracing.TELEMETRY)
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
    attributes = dict(spans[0].attributes or {})
    assert attributes["http.route"] == "/things/{thing}"
    assert attributes["http.request.method"] == "GET" and attributes["url.path"] == "/things/1"
    assert attributes["http.response.status_code"] == 200
    assert format(spans[0].parent.span_id, "016x") == "00f067aa0ba902b7"
    body = response.json()
    assert body["trace_id"] == CALLER
    assert response.headers["traceparent"] == body["traceparent"]
    assert body["traceparent"].split("-")[2] == format(spans[0].context.span_id, "016x")


async def test_an_invalid_incoming_traceparent_is_ignored_and_a_new_trace_started() -> None:
    """W3C trace context: a traceparent with an all-zero trace or parent id, or version ff, is not
    refused; the server starts a trace of its own (issue 11, item 7)."""
    tracing.ensure_provider()
    app = FastAPI(telemetry=tracing.TELEMETRY)
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


async def test_while_nothing_receives_spans_the_request_carries_the_same_trace_context_unrecorded(monkeypatch) -> None:
    """No exporter and no collector: the server span is a non-recording one, with the ids and the
    sampling decision the SDK's default sampler would give it (the caller's trace and flags, or a new
    sampled trace), and a send span inside it is its child in the same trace."""
    tracing.ensure_provider()
    monkeypatch.setattr(tracing.telemetry, "recording", lambda: False)
    app = FastAPI(telemetry=tracing.TELEMETRY)
    tracing.install(app)

    @app.get("/things")
    async def things(request: Request) -> dict[str, str | bool | None]:
        server = trace.get_current_span()
        with tracing.send_span("usage", "kafka") as send:
            child = tracing.traceparent_of(send)
        return {
            "traceparent": request.state.traceparent,
            "current": tracing.traceparent_of(server),
            "child": child,
            "recording": server.is_recording() or send.is_recording(),
        }

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        answers = {
            flags: await client.get("/things", headers={"traceparent": f"00-{CALLER}-00f067aa0ba902b7-{flags}"})
            for flags in ("01", "00")
        }
        root = await client.get("/things")
    for flags, response in answers.items():
        body = response.json()
        version, trace_id, span_id, own_flags = body["traceparent"].split("-")
        assert (version, trace_id, own_flags) == ("00", CALLER, flags)
        assert span_id not in ("00f067aa0ba902b7", "0" * 16)
        assert body["current"] == body["traceparent"] == response.headers["traceparent"]
        child = body["child"].split("-")
        assert child[1] == CALLER and child[3] == flags and child[2] not in (span_id, "00f067aa0ba902b7")
        assert body["recording"] is False
    body = root.json()
    _, trace_id, span_id, flags = body["traceparent"].split("-")
    assert trace_id not in (CALLER, "0" * 32) and span_id != "0" * 16 and flags == "01"
    assert body["child"].split("-")[1] == trace_id


async def test_a_span_is_never_named_after_a_path_nor_a_method_the_caller_made_up() -> None:
    """OpenTelemetry's HTTP conventions: a server span is `{method} {route}`, or `{method}` alone
    when no route answered (a path holds ids: one span name per id swamps a tracing backend's
    index), and a method HTTP does not define is `_OTHER` (`HTTP` in the name), the token sent
    kept in `http.request.method_original`."""
    tracing.ensure_provider()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI(telemetry=tracing.TELEMETRY)
    tracing.install(app)

    @app.get("/things/{thing}")
    async def thing() -> dict[str, str]:
        return {}

    caller = "7bf92f3577b34da6a3ce929d0e0e4739"
    headers = {"traceparent": f"00-{caller}-00f067aa0ba902b7-01"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/nothing/4f1c2a", headers=headers)).status_code == 404
            assert (await client.request("MADEUP", "/things/1", headers=headers)).status_code == 405
            assert (await client.request("MADEUP", "/nothing/4f1c2a", headers=headers)).status_code == 404
        spans = [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == caller]
    finally:
        exporter.shutdown()
    assert [s.name for s in spans] == ["GET", "HTTP /things/{thing}", "HTTP"]
    methods = [(s.attributes or {}).get("http.request.method") for s in spans]
    originals = [(s.attributes or {}).get("http.request.method_original") for s in spans]
    assert methods == ["GET", "_OTHER", "_OTHER"] and originals == [None, "MADEUP", "MADEUP"]
    assert [(s.attributes or {}).get("url.path") for s in spans] == ["/nothing/4f1c2a", "/things/1", "/nothing/4f1c2a"]


async def test_trace_headers_a_caller_sends_cost_no_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """The caller's trace headers are the caller's: Omni reads `traceparent` and `tracestate` (W3C
    trace context) and ignores what is invalid, as the spec says, without a word. It read `baggage`
    too, which it never uses, and OpenTelemetry logged a WARNING per bad member, echoing it: one
    8 KB request, before any key was checked, wrote 182 log lines."""
    tracing.ensure_provider()
    app = FastAPI(telemetry=tracing.TELEMETRY)
    tracing.install(app)

    @app.get("/things")
    async def things(request: Request) -> dict[str, str | None]:
        return {"trace_id": request.state.trace_id}

    headers = {
        "traceparent": f"00-{CALLER}-00f067aa0ba902b7-01",
        "tracestate": ",".join(["=bad"] * 30),
        "baggage": ";," * 4000,
    }
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/things", headers=headers)
        too_long = await client.get("/things", headers={"traceparent": "x" * 8000})
    assert response.status_code == too_long.status_code == 200
    assert response.json()["trace_id"] == CALLER  # the valid traceparent joined; the bad tracestate dropped
    assert too_long.json()["trace_id"] != CALLER
    assert [r.getMessage()[:80] for r in caplog.records if r.name.startswith("opentelemetry")] == []
