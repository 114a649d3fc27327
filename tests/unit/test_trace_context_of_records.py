"""streams.tracing: the trace contexts a batch's records carry in their `traceparent` headers."""

from __future__ import annotations

from opentelemetry.trace import TraceFlags

from streams.log import LogRecord
from streams.tracing import record_contexts

A = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
B = b"00-5bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b8-00"


def record(offset: int, *traceparents: bytes) -> LogRecord:
    headers = (("content-type", b"application/cloudevents+json"), *(("traceparent", t) for t in traceparents))
    return LogRecord("usage", 0, offset, "t", b"{}", headers)


def test_distinct_contexts_in_log_order_with_their_sampling_flag() -> None:
    found, distinct = record_contexts([record(0, A), record(1), record(2, B), record(3, A)])
    assert distinct == 2
    assert [(format(c.trace_id, "032x"), format(c.span_id, "016x"), c.trace_flags, c.is_remote) for c in found] == [
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", TraceFlags(1), True),
        ("5bf92f3577b34da6a3ce929d0e0e4737", "00f067aa0ba902b8", TraceFlags(0), True),
    ]


def test_unreadable_values_are_no_context_and_the_limit_counts_the_rest() -> None:
    bad = [
        b"garbage",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01",
        b"00-xyz",
    ]
    found, distinct = record_contexts([record(n, value) for n, value in enumerate(bad)])
    assert found == [] and distinct == 4
    many = [record(n, b"00-%032x-00f067aa0ba902b7-01" % (n + 1)) for n in range(10)]
    found, distinct = record_contexts(many, limit=3)
    assert [c.trace_id for c in found] == [1, 2, 3] and distinct == 10
