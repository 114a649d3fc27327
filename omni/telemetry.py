"""Tracing for every Omni process: the OpenTelemetry SDK's provider, exporting spans with OTLP
(protobuf over HTTP) when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is
set, and nowhere otherwise. The exporter reads the other OTEL_EXPORTER_OTLP_* variables (headers,
timeout, compression) itself; OTEL_SERVICE_NAME overrides the process's own name."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class OmniTracerProvider(TracerProvider):
    """The SDK's provider, knowing whether anything receives its spans (an exporter, a test's collector).

    Until something does, a span would be built, timed and dropped: the API's request spans
    (api/tracing.py) are then non-recording spans carrying the same ids, which the trace context
    needs, at a small part of the cost.
    """

    listened = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.listened = True


def recording() -> bool:
    """Whether spans started now reach anything: False only for Omni's provider with no processor."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, OmniTracerProvider) or provider.listened


def configure(service: str) -> None:
    """Set the SDK's provider once per process (real span ids need it; the first caller names it)."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = OmniTracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service}))
    if any(os.environ.get(name) for name in ENDPOINTS):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
