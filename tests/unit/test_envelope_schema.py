"""The record value's JSON Schema (schemas/envelope.schema.json) and the CloudEvents SDK's Kafka
binding read what encode writes; the schema also takes the records of layout 1, and refuses what
Omni never writes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import jsonschema_rs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.ingest import AdmissionPolicy, admit_encoded
from schemas.envelope import Actor, Envelope, encode, record_headers
from tests.topic_records import ANY_LAYOUT, SCHEMA, assert_readable_by_outsiders, schema_errors
from tests.unit.test_admission import valid_events
from tests.unit.test_envelope_decoding import LAYOUT_1

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert jsonschema_rs.meta.is_valid(SCHEMA)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_events(), min_size=1, max_size=3), st.none() | st.just(TRACEPARENT))
def test_every_admitted_event_is_a_valid_record_the_sdk_reads(events: list[dict], header_trace: str | None) -> None:
    ids = (f"0193-{n}" for n in itertools.count())
    admitted = admit_encoded(
        events,
        tenant_id="tenant-1",
        actor=Actor("key-1", "10.0.0.1", "curl/8"),
        received=RECEIVED,
        policy=AdmissionPolicy(window=timedelta(days=7)),
        new_id=lambda: next(ids),
        traceparent=header_trace,
    )
    for envelope, value in zip(admitted.envelopes, admitted.values, strict=True):
        assert assert_readable_by_outsiders(record_headers(envelope), b"tenant-1", value) == envelope


def test_control_plane_events_with_their_store_position_are_valid_records() -> None:
    from commands.control_plane import PLATFORM
    from streams.outbox import SOURCE

    at = datetime(2026, 11, 26, 5, tzinfo=UTC)
    control = Envelope(
        id="5b0c7c1e-4b4e-5d53-9c4e-0d3c3c1a4a11", type="omni.tenant.created", tenant_id=PLATFORM, source=SOURCE,
        source_id="0e7e9b52-5c4c-4d1c-9b5e-0d3c3c1a4a11/1", event_time=at, recorded_time=at,
        data={"tenant_id": "0e7e9b52", "name": "acme", "plan": "pro"}, extensions={"storeposition": 12},
    )  # fmt: skip
    assert assert_readable_by_outsiders(record_headers(control), control.id, encode(control)) == control


def test_layout_1_records_are_valid_records_of_their_own_layout() -> None:
    assert ANY_LAYOUT.is_valid(orjson.loads(LAYOUT_1))
    assert schema_errors(LAYOUT_1) != []  # not this version's layout


def record(**changes: object) -> bytes:
    at = datetime(2026, 11, 26, 5, tzinfo=UTC)
    body = orjson.loads(
        encode(Envelope(id="o", type="t", tenant_id="a", source="s", source_id="1", event_time=at, recorded_time=at))
    )
    body.update(changes)
    return orjson.dumps({name: value for name, value in body.items() if value is not ...})


@pytest.mark.parametrize(
    "changes",
    [
        {"tenantid": ...},
        {"omniid": ...},
        {"schemaversion": 3},
        {"specversion": "0.3"},
        {"subject": None},  # CloudEvents has no null attributes
        {"subject": ""},
        {"time": "2026-11-26T05:00:00Z"},  # Omni always writes microseconds, in UTC
        {"time": "2026-11-26T07:00:00.000000+02:00"},
        {"Region": "eu"},  # not a CloudEvents attribute name
        {"region_1": "eu"},
        {"traceparent": "not a trace"},
        {"storeposition": "12"},
        {"schema_version": 1},  # half of each layout
    ],
)
def test_what_omni_never_writes_is_invalid(changes: dict) -> None:
    assert schema_errors(record()) == []
    assert not ANY_LAYOUT.is_valid(orjson.loads(record(**changes)))
