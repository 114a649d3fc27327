"""Trace context across the log, as OpenTelemetry's messaging conventions put it.

The API's `send` span (api/routes/events.py) is the context every record of its request carries
in the record header `traceparent`. Folding a batch of records opens a `process` span: the child
of its records' context when they all share one trace (so one trace id runs from the client's
request to the views), else a root span with a link to each distinct context (a batch folds many
requests); inside it, `write views` spans the database transaction that commits the batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from streams.log import LogRecord

tracer = trace.get_tracer("omni.streams")
TRACEPARENT = "traceparent"
MAX_LINKS = 128  # the SDK's default limit of links per span


def _parsed(value: bytes) -> SpanContext | None:
    """A W3C traceparent (version 00's layout) as a remote span context; None if unreadable."""
    parts = value.split(b"-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] == b"ff":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))


def record_contexts(records: Sequence[LogRecord], limit: int = MAX_LINKS) -> tuple[list[SpanContext], int]:
    """The distinct trace contexts of the records' `traceparent` headers, in log order (at most
    `limit`), and how many distinct ones there were in all."""
    seen: set[bytes] = set()
    found: list[SpanContext] = []
    for record in records:
        for name, value in record.headers:
            if name == TRACEPARENT and value not in seen:
                seen.add(value)
                if len(found) < limit:
                    parsed = _parsed(value)
                    if parsed is not None:
                        found.append(parsed)
    return found, len(seen)


@contextmanager
def batch_span(system: str, topic: str, partition: int, records: Sequence[LogRecord]) -> Iterator[trace.Span]:
    """The `process` span of one batch, current while the batch is folded."""
    contexts, distinct = record_contexts(records)
    if distinct == 1 and contexts:
        parent, links = trace.set_span_in_context(NonRecordingSpan(contexts[0])), []
    else:
        parent, links = Context(), [Link(c) for c in contexts]  # a root: not whatever span is current here
    attributes = {
        "messaging.system": system,
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.batch.message_count": len(records),
    }
    if distinct > len(links) and distinct > 1:
        attributes["omni.traces_not_linked"] = distinct - len(links)
    with tracer.start_as_current_span(
        f"process {topic}", context=parent, kind=SpanKind.CONSUMER, links=links, attributes=attributes
    ) as span:
        yield span


def write_span() -> trace.Span:
    """`write views`: started now, as a child of the current span; the caller ends it after the commit."""
    return tracer.start_span("write views", kind=SpanKind.INTERNAL, attributes={"db.operation.name": "COMMIT"})
