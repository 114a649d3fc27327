"""W3C trace context: every request has a server span, joined to the caller's trace when it sends one.

FastAPI opens that span itself (its native OpenTelemetry support) once an SDK
tracer provider is set; this middleware then only reads it. Without one (say,
`FastAPI(telemetry={"tracing": False})`), the middleware opens the span.

The span's `traceparent` travels on into the envelopes and audit entries the
request produces, so a usage event or a command can be followed end to end,
and goes back to the caller in the `traceparent` response header.

An invalid incoming `traceparent` header (malformed, version ff, an all-zero
trace or parent id) is ignored, as W3C trace context says, not refused: the
OpenTelemetry propagator drops it and the server span starts a trace of its
own. (A CloudEvent's `traceparent` extension is refused instead, with its
event: schemas/cloudevents.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omni import telemetry

tracer = trace.get_tracer("omni.api")

# FastAPI's server span is all we need. Its operation spans (one per dependency, the endpoint and
# the serialisation) cost about as much as the span itself, several times per request.
TELEMETRY: TelemetryConfig = {"operation_spans": False}


def ensure_provider() -> None:
    """Real span ids need the SDK's provider; spans are exported with OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    telemetry.configure("omni-api")


@contextmanager
def send_span(topic: str, system: str) -> Iterator[Span]:
    """The PRODUCER span of a request's records, a child of the request's server span."""
    attributes = {"messaging.system": system, "messaging.operation.type": "send", "messaging.destination.name": topic}
    with tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent naming `span` (None for a span that is not recorded)."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class TracingMiddleware:
    """Plain ASGI rather than `@app.middleware("http")`: no extra task and memory streams per request,
    and the span is current in the very task that runs the route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        current = trace.get_current_span()
        if current.get_span_context().is_valid:  # FastAPI's own server span
            await self._within(current, scope, receive, send)
            return
        request = Request(scope)
        parent = propagate.extract(dict(request.headers))
        with tracer.start_as_current_span(f"{request.method} {request.url.path}", context=parent, kind=SpanKind.SERVER) as span:
            await self._within(span, scope, receive, send)
            route = scope.get("route")
            if route is not None:
                span.update_name(f"{request.method} {getattr(route, 'path', request.url.path)}")

    async def _within(self, span: Span, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with `span` current: its ids on request.state, its traceparent on the response."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        traceparent = carrier.get("traceparent")
        state = scope.setdefault("state", {})
        state["traceparent"] = traceparent
        state["trace_id"] = format(span.get_span_context().trace_id, "032x")

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                span.set_attribute("http.response.status_code", message["status"])
                if traceparent:
                    MutableHeaders(scope=message).append("traceparent", traceparent)
            await send(message)

        await self.app(scope, receive, send_traced)


def install(app: FastAPI) -> None:
    ensure_provider()
    app.add_middleware(TracingMiddleware)
