"""The wire layout: a structured-mode CloudEvent (layout 2), decoded typed in one step when it has no
extensions and field by field otherwise; layout 1 (Omni's own JSON, every record written before)
still decodes, to the same Envelope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.envelope import (
    RESERVED,
    SCHEMA_VERSION,
    Actor,
    Envelope,
    NewerSchema,
    ReservedName,
    _from_cloudevent,
    decode,
    encode,
    record_headers,
)
from streams.log import Outgoing, outgoing

AT = datetime(2026, 11, 26, 5, 0, 0, 123456, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# A record as the code before layout 2 wrote it (schemas/envelope.py at dd0d6be), byte for byte:
# Omni's id as `id`, the client's as `source_id`, the caller's IP address and user agent, the
# extensions nested, and a client extension that layout 2 reserves (`tenantid`).
LAYOUT_1 = (
    b'{"id":"0193e0a8-7c7e-7b1a-9c1e-1234567890ab","type":"inference","schema_version":1,"tenant_id":"t-1",'
    b'"source":"gw","source_id":"e-1","subject":"user-1","data_subject_id":null,'
    b'"event_time":"2026-11-26T05:00:00.123456Z","recorded_time":"2026-11-26T05:00:00.123456Z",'
    b'"actor":{"key_id":"k-1","ip":"10.0.0.1","user_agent":"curl/8"},'
    b'"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",'
    b'"extensions":{"region":"eu","tenantid":"theirs"},"data":{"tokens":3}}'
)


def envelope(**changes: object) -> Envelope:
    fields: dict = dict(
        id="0193-x", type="inference", tenant_id="t-1", source="gw", source_id="e-1", event_time=AT, recorded_time=AT,
        data={"tokens": 3}, subject="user-1", actor=Actor("k-1"), extensions={"region": "eu"},
    )  # fmt: skip
    fields.update(changes)
    return Envelope(**fields)


def wire(**changes: object) -> bytes:
    body = orjson.loads(encode(envelope()))
    body.update(changes)
    return orjson.dumps({name: value for name, value in body.items() if value is not ...})


def test_the_wire_form_is_a_cloudevent_with_omnis_attributes_as_extensions() -> None:
    body = orjson.loads(encode(envelope(traceparent=TRACEPARENT)))
    assert body == {
        "specversion": "1.0",
        "id": "e-1",  # the client's: (source, id) is the CloudEvent's identity
        "source": "gw",
        "type": "inference",
        "subject": "user-1",
        "time": "2026-11-26T05:00:00.123456Z",
        "omniid": "0193-x",
        "schemaversion": SCHEMA_VERSION,
        "tenantid": "t-1",
        "recordedtime": "2026-11-26T05:00:00.123456Z",
        "actorkeyid": "k-1",
        "traceparent": TRACEPARENT,
        "region": "eu",
        "data": {"tokens": 3},
    }
    assert list(body)[-1] == "data"


def test_attributes_without_a_value_are_left_out_and_the_ip_and_user_agent_never_written() -> None:
    bare = envelope(subject=None, data=None, actor=Actor(None, "10.0.0.1", "curl/8"), extensions={})
    body = orjson.loads(encode(bare))
    assert set(body) == {"specversion", "id", "source", "type", "time", "omniid", "schemaversion", "tenantid", "recordedtime"}
    assert b"10.0.0.1" not in encode(bare) and b"curl" not in encode(bare)
    assert decode(encode(bare)) == envelope(subject=None, data=None, actor=Actor(), extensions={})


@pytest.mark.parametrize("extensions", [{}, {"region": "eu"}, {"region": {"nested": [1, 2]}, "n": 3, "storeposition": 7}])
def test_this_layout_reads_back_equal_with_or_without_extensions(extensions: dict) -> None:
    original = envelope(extensions=extensions, traceparent=TRACEPARENT, data_subject_id="person-1")
    again = decode(encode(original))
    assert again == original
    assert again.event_time.tzinfo is UTC and again.schema_version == SCHEMA_VERSION
    assert list(again.extensions) == list(extensions)  # in their order, so the record re-encodes the same
    assert encode(again) == encode(original)


def test_layout_1_still_decodes_with_everything_it_carried() -> None:
    old = decode(LAYOUT_1)
    assert old == Envelope(
        id="0193e0a8-7c7e-7b1a-9c1e-1234567890ab",
        type="inference",
        tenant_id="t-1",
        source="gw",
        source_id="e-1",
        event_time=AT,
        recorded_time=AT,
        data={"tokens": 3},
        subject="user-1",
        actor=Actor("k-1", "10.0.0.1", "curl/8"),
        traceparent=TRACEPARENT,
        schema_version=1,
        extensions={"region": "eu", "tenantid": "theirs"},  # a client's then: no clash with Omni's tenant
    )
    assert old.dedupe_key == ("t-1", "gw", "e-1")  # the same identity as the same event of layout 2


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"extensions": None}, {"extensions": {}}),
        ({"actor": None}, {"actor": Actor()}),
        ({"event_time": "2026-11-26 05:00:00.123456+00:00"}, {"event_time": AT}),  # not RFC 3339, still ISO 8601
        ({"subject": None, "traceparent": None}, {"subject": None}),
    ],
)
def test_layout_1_variants_are_read_field_by_field(changes: dict, expected: dict) -> None:
    body = orjson.loads(LAYOUT_1)
    body.update(changes)
    old = decode(orjson.dumps(body))
    for name, value in expected.items():
        assert getattr(old, name) == value
    assert old.source_id == "e-1"


@pytest.mark.parametrize(
    "changes",
    [
        {"time": "2026-11-26T07:00:00.123456+02:00"},  # an offset: the same instant
        {"datacontenttype": "application/json"},  # written by another producer: no extension
        {"subject": ..., "data": ...},
    ],
)
def test_this_layout_as_other_producers_may_write_it(changes: dict) -> None:
    again = decode(wire(**changes))
    assert again.event_time == AT and again.source_id == "e-1" and again.extensions == {"region": "eu"}


def test_a_newer_schema_version_stops_the_reader_whatever_its_layout() -> None:
    newer = SCHEMA_VERSION + 1
    with pytest.raises(NewerSchema):
        decode(encode(envelope(extensions={})).replace(b'"schemaversion":2', b'"schemaversion":%d' % newer))  # typed path
    with pytest.raises(NewerSchema):
        decode(wire(schemaversion=newer))  # with an extension: the general path
    with pytest.raises(NewerSchema):
        decode(wire(schemaversion=newer, time=1_764_133_200, tenantid=["a layout this code cannot type"]))
    with pytest.raises(NewerSchema):
        decode(LAYOUT_1.replace(b'"schema_version":1', b'"schema_version":%d' % newer))


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b"{}",
        orjson.dumps({"id": "x", "schema_version": 1}),
        orjson.dumps({"specversion": "1.0", "id": "x"}),
        wire(tenantid=7),  # typed: a number where text belongs
        wire(time="yesterday"),
        wire(specversion="0.3"),
        wire(omniid=...),
    ],
)
def test_what_is_not_an_envelope_raises_what_the_projectors_dead_letter(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode(raw)


@pytest.mark.parametrize("name", sorted(RESERVED - {"storeposition", "quotaconsume"}) + ["traceparent"])
def test_an_extension_may_not_overwrite_an_attribute_of_omnis_own(name: str) -> None:
    with pytest.raises(ReservedName):
        encode(envelope(extensions={name: "x"}))


def test_record_headers_name_the_structured_mode_and_carry_the_trace() -> None:
    assert record_headers(envelope()) == (("content-type", b"application/cloudevents+json"),)
    assert record_headers(envelope(traceparent=TRACEPARENT)) == (
        ("content-type", b"application/cloudevents+json"),
        ("traceparent", TRACEPARENT.encode()),
    )


def test_an_envelopes_outgoing_record_is_its_key_value_and_headers() -> None:
    traced = envelope(traceparent=TRACEPARENT)
    item = outgoing("t-1", traced, b"{}")
    assert type(item) is Outgoing and item == Outgoing("t-1", b"{}", record_headers(traced))
    assert (item.key, item.value, item.headers) == ("t-1", b"{}", record_headers(traced))


def test_record_headers_kept_for_a_trace_context_are_never_another_envelopes() -> None:
    # record_headers keeps the last trace context's headers (a request's envelopes share one):
    # whatever order envelopes come in, each record carries its own envelope's trace context.
    other = "00-5bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b8-00"
    order = [TRACEPARENT, TRACEPARENT, None, other, TRACEPARENT, None, other, other, "".join(TRACEPARENT)]
    for traceparent in order:
        headers = record_headers(envelope(traceparent=traceparent))
        expected = [("content-type", b"application/cloudevents+json")]
        if traceparent is not None:
            expected.append(("traceparent", traceparent.encode()))
        assert headers == tuple(expected)


names = st.from_regex(r"\A[a-z0-9]{1,20}\Z").filter(lambda n: n not in RESERVED and n != "traceparent")
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)).map(
    lambda naive: naive.replace(tzinfo=UTC)
) | st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)).map(
    lambda naive: naive.replace(tzinfo=timezone(timedelta(hours=5, minutes=30)))
)


@settings(max_examples=200, deadline=None, database=None)
@given(
    extensions=st.dictionaries(names, values, max_size=3),
    data=values,
    subject=st.none() | st.text(min_size=1, max_size=10),
    event_time=moments,
    key_id=st.none() | st.text(min_size=1, max_size=10),
)
def test_both_decoding_paths_agree_and_round_trip(
    extensions: dict, data: object, subject: str | None, event_time: datetime, key_id: str | None
) -> None:
    original = envelope(extensions=extensions, data=data, subject=subject, event_time=event_time, actor=Actor(key_id))
    raw = encode(original)
    general = _from_cloudevent(orjson.loads(raw), SCHEMA_VERSION)
    assert decode(raw) == general == original


def test_an_encoded_envelope_holds_no_more_memory_than_its_text() -> None:
    """encode trims orjson's output buffer (at least 4 KiB), which the log's appends would otherwise
    hold per event until Kafka acknowledges them."""
    import tracemalloc

    big = Envelope(
        id="0193-x", type="inference", tenant_id="t-1", source="gw", source_id="e-1", event_time=AT, recorded_time=AT,
        data={"tokens": 3, "model": "m" * 300},
    )  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [encode(big) for _ in range(200)]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert decode(kept[0]) == big
    assert held < len(kept[0]) + 200  # the text, the bytes object's header, the list's slot
