"""decode: this version's layout typed in one step; anything else field by field, as before."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from schemas.envelope import Actor, Envelope, NewerSchema, decode, encode

AT = datetime(2026, 11, 26, 5, 0, 0, 123456, tzinfo=UTC)


def wire(**changes: object) -> bytes:
    envelope = Envelope(
        id="0193-x", type="inference", tenant_id="t-1", source="gw", source_id="e-1", event_time=AT, recorded_time=AT,
        data={"tokens": 3}, subject="user-1", actor=Actor("k-1", "10.0.0.1", "curl/8"), extensions={"region": "eu"},
    )  # fmt: skip
    body = orjson.loads(encode(envelope))
    body.update(changes)
    return orjson.dumps(body)


def test_the_current_layout_reads_back_equal() -> None:
    envelope = decode(wire())
    assert envelope.actor == Actor("k-1", "10.0.0.1", "curl/8")
    assert envelope.event_time == AT and envelope.event_time.tzinfo is UTC
    assert (envelope.data, envelope.extensions, envelope.subject) == ({"tokens": 3}, {"region": "eu"}, "user-1")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"extensions": None}, {"extensions": {}}),
        ({"actor": None}, {"actor": Actor()}),
        ({"event_time": "2026-11-26 05:00:00.123456+00:00"}, {"event_time": AT}),  # not RFC 3339, still ISO 8601
        ({"subject": None, "traceparent": None}, {"subject": None}),
    ],
)
def test_layouts_the_typed_decoder_refuses_are_read_field_by_field(changes: dict, expected: dict) -> None:
    envelope = decode(wire(**changes))
    for name, value in expected.items():
        assert getattr(envelope, name) == value
    assert envelope.source_id == "e-1"


def test_a_newer_schema_version_stops_the_reader_whatever_its_layout() -> None:
    with pytest.raises(NewerSchema):
        decode(wire(schema_version=2))  # this layout, a newer version
    with pytest.raises(NewerSchema):
        decode(wire(schema_version=2, actor="k-1", event_time=1_764_133_200))  # a layout this code cannot type


@pytest.mark.parametrize("raw", [b"not json", b"[]", b"{}", orjson.dumps({"id": "x", "schema_version": 1})])
def test_what_is_not_an_envelope_raises_what_the_projectors_dead_letter(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode(raw)


def test_an_encoded_envelope_holds_no_more_memory_than_its_text() -> None:
    """encode trims orjson's output buffer (at least 4 KiB), which the log's appends would otherwise
    hold per event until Kafka acknowledges them."""
    import tracemalloc

    envelope = Envelope(
        id="0193-x", type="inference", tenant_id="t-1", source="gw", source_id="e-1", event_time=AT, recorded_time=AT,
        data={"tokens": 3, "model": "m" * 300},
    )  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [encode(envelope) for _ in range(200)]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert decode(kept[0]) == envelope
    assert held < len(kept[0]) + 200  # the text, the bytes object's header, the list's slot
