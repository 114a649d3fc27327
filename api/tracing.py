"""W3C trace context: every request has a server span, joined to the caller's trace when it sends one.

This middleware opens that span (FastAPI's own telemetry is off: its span cost about half again as
much, for attributes nobody reads until an exporter is set). While nothing receives spans (no
OTLP endpoint configured, no collector added), the span is a non-recording one: the same ids and
the same sampling decision as the SDK's default sampler would make (the caller's flags, or sampled
for a new trace), without building, timing and dropping a span on every request. Once something
listens (`omni.telemetry.recording()`), it is the SDK's span, with the HTTP attributes.

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

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omni import telemetry

tracer = trace.get_tracer("omni.api")
ids = RandomIdGenerator()

# The request's span is TracingMiddleware's; FastAPI's own (and its operation spans, metrics and
# logs, which Omni does not configure) would only add to every request's cost.
TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
# HTTP's own methods (RFC 9110, and PATCH), as OpenTelemetry's `http.request.method` knows them: any
# other token is `_OTHER` (the span's `http.request.method_original` keeps it) in spans and in the
# metrics' `method` label, so no caller makes a series, or a span name, per method it makes up.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
OTHER_METHOD = "_OTHER"
# The caller's W3C trace context: `traceparent` and `tracestate` (baggage, which Omni never reads,
# is not parsed: OpenTelemetry warns once per bad member of it, echoing the member).
_PROPAGATED = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
_TRACE_CONTEXT = TraceContextTextMapPropagator()
# What a caller's trace headers hold is the caller's concern: an invalid one is ignored, as W3C trace
# context says, and not logged. OpenTelemetry logs a WARNING for a traceparent past 512 characters
# and for each bad tracestate member (echoing it): lines any caller, without a key, could make.
_QUIET = ("opentelemetry.trace.propagation.tracecontext", "opentelemetry.trace.span")


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def _span_method(method: str) -> str:
    """A span name's method: OpenTelemetry's conventions name a span of another method `HTTP`."""
    return method if method in KNOWN_METHODS else "HTTP"


def ensure_provider() -> None:
    """Real span ids need the SDK's provider; spans are exported with OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    telemetry.configure("omni-api")


@contextmanager
def send_span(topic: str, system: str) -> Iterator[Span]:
    """The PRODUCER span of a request's records, a child of the request's server span."""
    if not telemetry.recording():
        with trace.use_span(_unrecorded_child(trace.get_current_span().get_span_context())) as span:
            yield span
        return
    attributes = {"messaging.system": system, "messaging.operation.type": "send", "messaging.destination.name": topic}
    with tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span


def _unrecorded_child(parent: SpanContext) -> NonRecordingSpan:
    """A span nothing records: a new span id in the parent's trace, with its flags and trace state;
    with no valid parent, a new trace, sampled (as the SDK's default sampler decides for a root)."""
    if parent.is_valid:
        own = SpanContext(parent.trace_id, ids.generate_span_id(), False, parent.trace_flags, parent.trace_state)
    else:
        own = SpanContext(ids.generate_trace_id(), ids.generate_span_id(), False, TraceFlags(TraceFlags.SAMPLED))
    return NonRecordingSpan(own)


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent naming `span` (None for a span that is not recorded)."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span (a request's server span, in a route)."""
    return traceparent_of(trace.get_current_span())


@contextmanager
def request_span(method: str, path: str, headers: Iterable[tuple[bytes, bytes]], scheme: str) -> Iterator[Span]:
    """A request's server span, current within the block: a child of the trace the caller's headers
    name, if any. Non-recording while nothing receives spans (see the module's doc)."""
    carrier = {_PROPAGATED[name]: value.decode("latin-1") for name, value in headers if name in _PROPAGATED}
    parent = _TRACE_CONTEXT.extract(carrier) if carrier else Context()
    if not telemetry.recording():
        span: Span = _unrecorded_child(trace.get_current_span(parent).get_span_context())
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            yield span
        finally:
            otel_context.detach(token)
        return
    attributes = {"http.request.method": method_label(method), "url.path": path, "url.scheme": scheme}
    if method not in KNOWN_METHODS:
        attributes["http.request.method_original"] = method
    # Named by its method alone until a route answers (`named`): never by the path, which holds ids.
    with tracer.start_as_current_span(_span_method(method), context=parent, kind=SpanKind.SERVER, attributes=attributes) as span:
        yield span


def named(span: Span, method: str, route: str | None) -> None:
    """Name a recording span after the route that answered (its template, not the path)."""
    if route is not None and span.is_recording():
        span.set_attribute("http.route", route)
        span.update_name(f"{_span_method(method)} {route}")


class TracingMiddleware:
    """Plain ASGI rather than `@app.middleware("http")`: no extra task and memory streams per request,
    and the span is current in the very task that runs the route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with request_span(scope["method"], scope["path"], scope["headers"], scope.get("scheme", "http")) as span:
            await self._within(span, scope, receive, send)
            named(span, scope["method"], getattr(scope.get("route"), "path", None))

    async def _within(self, span: Span, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with `span` current: its ids on request.state, its traceparent on the response."""
        traceparent = traceparent_of(span)
        state = scope.setdefault("state", {})
        state["traceparent"] = traceparent
        state["trace_id"] = format(span.get_span_context().trace_id, "032x")
        recording = span.is_recording()

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                if recording:
                    span.set_attribute("http.response.status_code", message["status"])
                if traceparent:
                    MutableHeaders(scope=message).append("traceparent", traceparent)
            await send(message)

        await self.app(scope, receive, send_traced)


def install(app: FastAPI) -> None:
    ensure_provider()
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    app.add_middleware(TracingMiddleware)
