"""Omni's records as an outside consumer reads them: the CloudEvents SDK's Kafka binding, and the
envelope's JSON Schema (schemas/envelope.schema.json). Shared by the unit, e2e and integration tiers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1 import kafka as sdk_v1_kafka

from schemas.envelope import STRUCTURED, Envelope, decode, format_time

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "envelope.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
# Any record Omni has written, and this version's layout alone.
ANY_LAYOUT = jsonschema_rs.Draft202012Validator(SCHEMA, validate_formats=True)
CURRENT_LAYOUT = jsonschema_rs.Draft202012Validator({**SCHEMA, "oneOf": [{"$ref": "#/$defs/cloudEvent"}]}, validate_formats=True)


def schema_errors(value: bytes, validator: jsonschema_rs.Validator = CURRENT_LAYOUT) -> list[str]:
    return [error.message for error in validator.iter_errors(orjson.loads(value))]


def sdk_read(headers: Sequence[tuple[str, bytes]], key: bytes | str | None, value: bytes) -> Any:
    """The CloudEvent the SDK's Kafka binding reads from a record (it picks the content mode itself)."""
    message = sdk_kafka.KafkaMessage(headers=dict(headers), key=key, value=value)
    return sdk_kafka.from_kafka(message, JSONFormat())


def sdk_v1_read(headers: Sequence[tuple[str, bytes]], key: bytes | str | None, value: bytes) -> Any:
    """The same with the SDK's 1.x API (`cloudevents.kafka` then, `cloudevents.v1.kafka` now)."""
    return sdk_v1_kafka.from_structured(sdk_v1_kafka.KafkaMessage(dict(headers), key, value))


def assert_readable_by_outsiders(headers: Sequence[tuple[str, bytes]], key: bytes | str | None, value: bytes) -> Envelope:
    """One record of layout 2: its headers, the JSON Schema, and both SDK APIs agree with Omni's own
    reading of it. Returns that reading."""
    envelope = decode(value)
    named = dict(headers)
    assert named.get("content-type") == STRUCTURED.encode(), headers
    assert not any(name.startswith("ce_") for name in named), headers  # or the SDK would read binary mode
    if envelope.traceparent is None:
        assert "traceparent" not in named
    else:
        assert named["traceparent"] == envelope.traceparent.encode()
    assert schema_errors(value) == []

    event = sdk_read(headers, key, value)
    attributes = event.get_attributes()
    assert (event.get_specversion(), event.get_id(), event.get_source(), event.get_type()) == (
        "1.0",
        envelope.source_id,
        envelope.source,
        envelope.type,
    )
    assert event.get_subject() == envelope.subject
    assert event.get_time() == envelope.event_time
    assert event.get_data() == envelope.data
    assert attributes["omniid"] == envelope.id
    assert attributes["tenantid"] == envelope.tenant_id
    assert attributes["schemaversion"] == 2
    assert attributes["recordedtime"] == format_time(envelope.recorded_time)
    assert attributes.get("actorkeyid") == envelope.actor.key_id
    assert attributes.get("traceparent") == envelope.traceparent
    for name, extension in envelope.extensions.items():
        assert event.get_extension(name) == extension
    expected_key = key.decode() if isinstance(key, bytes) else key
    assert attributes["partitionkey"] == expected_key  # the binding's name for the record key

    old_api = sdk_v1_read(headers, key, value)
    assert (old_api["id"], old_api["source"], old_api["type"], old_api["tenantid"]) == (
        envelope.source_id,
        envelope.source,
        envelope.type,
        envelope.tenant_id,
    )
    assert old_api.get_data() == envelope.data
    return envelope
