"""The envelope every event on the log carries, and its wire encoding."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

SCHEMA_VERSION = 1


class Actor(msgspec.Struct, frozen=True):
    """Who caused an event: the API key, and where the request came from."""

    key_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


class Envelope(msgspec.Struct, frozen=True):
    """One fact on the log.

    `id` is unique on the log (UUIDv7). `source` and `source_id` are the
    producer's own identity for the fact (the CloudEvent `source` and `id`);
    together with the tenant they are the de-duplication key.

    An immutable msgspec struct: built and decoded in C (a frozen dataclass took 2 µs to
    build and the dict-based decoding 5 µs, per event, in the API and in every worker).
    """

    id: str
    type: str
    tenant_id: str
    source: str
    source_id: str
    event_time: datetime
    recorded_time: datetime
    data: Any = None
    subject: str | None = None
    data_subject_id: str | None = None
    actor: Actor = msgspec.field(default_factory=Actor)
    traceparent: str | None = None
    schema_version: int = SCHEMA_VERSION
    extensions: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def dedupe_key(self) -> tuple[str, str, str]:
        return (self.tenant_id, self.source, self.source_id)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, so the text sorts like the time."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    return utc.isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def _wire_time(moment: datetime) -> datetime | str:
    """What `encode` hands orjson for a time: the UTC datetime itself, which orjson writes as
    format_time does but 6 times faster, except when its microseconds are 0 (orjson leaves them out)."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    return utc if utc.microsecond else format_time(utc)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)  # takes the "Z" since Python 3.11


def encode(envelope: Envelope) -> bytes:
    """The envelope's wire form (JSON), in a bytes object of its own size.

    orjson (3.12 on) writes into a buffer of at least 4 KiB, more for larger objects, and hands it
    back untrimmed: about 8 KiB held per encoded envelope while its append waits for Kafka, 16x the
    text. Copying the text out frees the buffer at once, and the next encode reuses it while it is
    still in cache, so the copy makes encoding faster too (about 5.5 -> 2.3 µs per envelope).
    """
    actor = envelope.actor
    text = orjson.dumps(
        {
            "id": envelope.id,
            "type": envelope.type,
            "schema_version": envelope.schema_version,
            "tenant_id": envelope.tenant_id,
            "source": envelope.source,
            "source_id": envelope.source_id,
            "subject": envelope.subject,
            "data_subject_id": envelope.data_subject_id,
            "event_time": _wire_time(envelope.event_time),
            "recorded_time": _wire_time(envelope.recorded_time),
            "actor": {"key_id": actor.key_id, "ip": actor.ip, "user_agent": actor.user_agent},
            "traceparent": envelope.traceparent,
            "extensions": envelope.extensions,
            "data": envelope.data,
        },
        option=orjson.OPT_UTC_Z,
    )
    return bytes(memoryview(text))


_CURRENT = msgspec.json.Decoder(Envelope)


def decode(raw: bytes | str) -> Envelope:
    """An envelope from its wire encoding. NewerSchema if newer code wrote it; ValueError,
    KeyError or TypeError if it is not an envelope at all."""
    try:
        envelope = _CURRENT.decode(raw)  # the common case: this version's layout, typed in C
    except msgspec.DecodeError:
        return _decode_any(raw)  # an older layout, a newer one, or none: decided field by field
    if envelope.schema_version > SCHEMA_VERSION:
        raise NewerSchema(f"envelope schema version {envelope.schema_version} is newer than this code ({SCHEMA_VERSION})")
    return envelope


def _decode_any(raw: bytes | str) -> Envelope:
    body = orjson.loads(raw)
    if not isinstance(body, dict):
        raise TypeError(f"an envelope is a JSON object, not {type(body).__name__}")
    body = upcast(body)
    actor = body.get("actor") or {}
    return Envelope(
        id=body["id"],
        type=body["type"],
        schema_version=body["schema_version"],
        tenant_id=body["tenant_id"],
        source=body["source"],
        source_id=body["source_id"],
        subject=body.get("subject"),
        data_subject_id=body.get("data_subject_id"),
        event_time=parse_time(body["event_time"]),
        recorded_time=parse_time(body["recorded_time"]),
        actor=Actor(actor.get("key_id"), actor.get("ip"), actor.get("user_agent")),
        traceparent=body.get("traceparent"),
        extensions=body.get("extensions") or {},
        data=body.get("data"),
    )


class NewerSchema(Exception):
    """Written by newer code: upgrade this reader rather than skip the event."""


def upcast(body: dict[str, Any]) -> dict[str, Any]:
    """Bring an older envelope up to SCHEMA_VERSION. Version 1 is the first."""
    version = body.get("schema_version", 1)
    if version > SCHEMA_VERSION:
        raise NewerSchema(f"envelope schema version {version} is newer than this code ({SCHEMA_VERSION})")
    return body
