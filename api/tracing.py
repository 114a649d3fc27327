"""W3C trace context: every request gets a server span, joined to the caller's trace when it sends one.

The span's `traceparent` travels on into the envelopes and audit entries the
request produces, so a usage event or a command can be followed end to end.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from starlette.responses import Response

tracer = trace.get_tracer("omni.api")


def ensure_provider() -> None:
    """Real span ids need the SDK's provider; exporters are the deployer's choice (OTEL_* variables)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())


def install(app: FastAPI) -> None:
    ensure_provider()

    @app.middleware("http")
    async def traced(request: Request, call_next):  # type: ignore[no-untyped-def]
        parent = propagate.extract(dict(request.headers))
        with tracer.start_as_current_span(f"{request.method} {request.url.path}", context=parent, kind=SpanKind.SERVER) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            request.state.traceparent = carrier.get("traceparent")
            request.state.trace_id = format(span.get_span_context().trace_id, "032x")
            response: Response = await call_next(request)
            route = request.scope.get("route")
            if route is not None:
                span.update_name(f"{request.method} {getattr(route, 'path', request.url.path)}")
            span.set_attribute("http.response.status_code", response.status_code)
            if request.state.traceparent:
                response.headers["traceparent"] = request.state.traceparent
            return response
