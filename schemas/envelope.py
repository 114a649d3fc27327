"""The envelope every event on the log carries, and its wire encoding.

On the log an event is a CloudEvent 1.0 in the structured content mode of the CloudEvents Kafka
protocol binding: the record's value is the whole event in the JSON event format
(`application/cloudevents+json`, said by the record header `content-type`), and the W3C trace
context travels in the record header `traceparent` too (OpenTelemetry's messaging conventions).
So the CloudEvents SDKs, kcat or any Kafka consumer read Omni's topics without Omni's code.

The CloudEvent's identity is the producer's own: `source` and `id` are what the client sent
(with the tenant, the de-duplication key). Omni's own attributes are CloudEvents extension
attributes (lowercase letters and digits):

- `omniid`: Omni's unique id of the record's event (UUIDv7 for usage, derived from the event
  store for control-plane events);
- `schemaversion`: this layout's version (SCHEMA_VERSION);
- `tenantid`: the tenant, from the caller's key (never from the body);
- `recordedtime`: when Omni accepted the event (RFC 3339, UTC, microseconds);
- `datasubjectid`: the person the event concerns, where one is (not yet set by anything);
- `actorkeyid`: the API key that sent it. Nothing personal (no IP address, no user agent): the
  topics keep events forever, where personal data could not be erased; the audit trail keeps
  where each command came from;
- `traceparent`: the W3C trace context (the CloudEvents distributed-tracing extension).

The client's own extension attributes sit beside them, as CloudEvents wants; admission refuses
a client extension named like one of Omni's (RESERVED).

Layout 1 (every record written before this one) was Omni's own JSON: `id` was Omni's id and
`source_id` the client's, `event_time`, `recorded_time`, `tenant_id`, an `actor` object with the
IP address and user agent, the client's extensions nested under `extensions`, and no record
headers. `decode` reads both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import filterfalse
from typing import Any, Literal

import msgspec
import orjson

SCHEMA_VERSION = 2
SPECVERSION = "1.0"
STRUCTURED = "application/cloudevents+json"  # the record header `content-type` of every event

# A Kafka record's headers, as aiokafka takes and gives them: (name, value) pairs, in order.
Headers = tuple[tuple[str, bytes], ...]
CONTENT_TYPE = "content-type"
TRACEPARENT = "traceparent"
_STRUCTURED_HEADERS: Headers = ((CONTENT_TYPE, STRUCTURED.encode()),)

# CloudEvents' context attributes (and `data`, `data_base64`), and Omni's extension attributes.
CONTEXT_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"}
)
OMNI_ATTRIBUTES = frozenset(
    {
        "omniid",
        "schemaversion",
        "tenantid",
        "recordedtime",
        "datasubjectid",
        "actorkeyid",
        "traceparent",
        "storeposition",
        "quotaconsume",
    }
)
# The names a client's extension attribute may not take (admission refuses them): Omni's own, but
# `traceparent`, which a client sends for Omni to keep; and `partitionkey`, the Kafka binding's
# name for the record key (here the tenant), which the SDKs set from the key on reading.
RESERVED = (CONTEXT_ATTRIBUTES | OMNI_ATTRIBUTES | {"partitionkey"}) - {"traceparent"}
# Attributes written from and read into the Envelope's own fields; every other one is an extension
# (`storeposition` too: the outbox relay sets it among the extensions of control-plane events; and
# `quotaconsume`, which marks a usage event that a quota's consume recorded: projections.quotas).
_FIELDS = CONTEXT_ATTRIBUTES | (OMNI_ATTRIBUTES - {"storeposition", "quotaconsume"})
_NOT_FROM_EXTENSIONS = _FIELDS | {"partitionkey"}
_IS_FIELD = _FIELDS.__contains__


class Actor(msgspec.Struct, frozen=True):
    """Who caused an event: the API key, and where the request came from.

    Only `key_id` is written to the log (`actorkeyid`): the IP address and user agent are
    personal data, kept in the audit trail of commands rather than on the topics, which keep
    every event forever. Records of layout 1 still carry them, and decode to them.
    """

    key_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


NO_ACTOR = Actor()


class Envelope(msgspec.Struct, frozen=True):
    """One fact on the log.

    `id` is Omni's unique id for it (UUIDv7; `omniid` on the wire). `source` and `source_id` are
    the producer's own identity for the fact (the CloudEvent `source` and `id`); together with
    the tenant they are the de-duplication key.

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
    actor: Actor = NO_ACTOR
    traceparent: str | None = None
    schema_version: int = SCHEMA_VERSION  # the layout it was read from; `encode` writes SCHEMA_VERSION
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


def cursor_time(text: str) -> str | None:
    """A page cursor's instant as format_time writes it, or None for text that is not an RFC 3339
    time with an offset, or one outside years 1 to 9999 once in UTC (`0001-01-01T00:00:00+01:00`)."""
    try:
        moment = parse_time(text)
        return None if moment.tzinfo is None else format_time(moment)
    except (ValueError, OverflowError):
        return None


class ReservedName(ValueError):
    """An extension attribute named like one of CloudEvents' or Omni's own."""


def encode(envelope: Envelope) -> bytes:
    """The envelope's wire form, a structured-mode CloudEvent (JSON), in a bytes object of its own size.

    Attributes without a value are left out (CloudEvents has no null attributes; its SDKs refuse an
    empty `subject`), and `data` comes last.

    orjson (3.12 on) writes into a buffer of at least 4 KiB, more for larger objects, and hands it
    back untrimmed: about 8 KiB held per encoded envelope while its append waits for Kafka, 16x the
    text. Copying the text out frees the buffer at once, and the next encode reuses it while it is
    still in cache, so the copy makes encoding faster too (about 5.5 -> 2.3 µs per envelope).
    """
    body: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": envelope.source_id,
        "source": envelope.source,
        "type": envelope.type,
    }
    if envelope.subject is not None:
        body["subject"] = envelope.subject
    body["time"] = _wire_time(envelope.event_time)
    body["omniid"] = envelope.id
    body["schemaversion"] = SCHEMA_VERSION
    body["tenantid"] = envelope.tenant_id
    body["recordedtime"] = _wire_time(envelope.recorded_time)
    if envelope.data_subject_id is not None:
        body["datasubjectid"] = envelope.data_subject_id
    if envelope.actor.key_id is not None:
        body["actorkeyid"] = envelope.actor.key_id
    if envelope.traceparent is not None:
        body["traceparent"] = envelope.traceparent
    extensions = envelope.extensions
    if extensions:
        if not _NOT_FROM_EXTENSIONS.isdisjoint(extensions):
            # Admission refuses these; nothing else building envelopes may overwrite Omni's own.
            taken = sorted(_NOT_FROM_EXTENSIONS.intersection(extensions))
            raise ReservedName(f"extension attributes {taken} are reserved (CloudEvents' or Omni's own)")
        body.update(extensions)
    if envelope.data is not None:
        body["data"] = envelope.data
    text = orjson.dumps(body, option=orjson.OPT_UTC_Z)
    return bytes(memoryview(text))


# The last trace context's headers, kept: a request's envelopes share one trace context, so all
# but its first reuse them (immutable: a tuple of (str, bytes) pairs). One pair, replaced whole.
_last_traced: tuple[str, Headers] = ("", _STRUCTURED_HEADERS)


def record_headers(envelope: Envelope) -> Headers:
    """The Kafka record headers of an envelope's record: its content type (the structured mode of
    the CloudEvents Kafka binding), and its trace context when it has one."""
    global _last_traced
    traceparent = envelope.traceparent
    if traceparent is None:
        return _STRUCTURED_HEADERS
    last = _last_traced
    if last[0] == traceparent:
        return last[1]
    headers = (_STRUCTURED_HEADERS[0], (TRACEPARENT, traceparent.encode()))
    _last_traced = (traceparent, headers)
    return headers


class Wire(msgspec.Struct, forbid_unknown_fields=True):
    """This version's layout without extensions, typed and checked in C. Unknown attributes (the
    client's extensions, `storeposition`, anything newer) make it refuse the record, which then
    takes the general path: most usage events have no extensions."""

    specversion: Literal["1.0"]
    id: str
    source: str
    type: str
    time: datetime
    omniid: str
    schemaversion: int
    tenantid: str
    recordedtime: datetime
    subject: str | None = None
    datasubjectid: str | None = None
    actorkeyid: str | None = None
    traceparent: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: Any = None


class _Attributes(Wire, forbid_unknown_fields=False):
    """This version's own attributes among any others."""


_CURRENT = msgspec.json.Decoder(Wire)


def decode(raw: bytes | str) -> Envelope:
    """An envelope from its wire encoding (this layout or layout 1). NewerSchema if newer code wrote
    it; ValueError, KeyError or TypeError if it is not an envelope at all."""
    try:
        wire = _CURRENT.decode(raw)  # the common case: this version's layout, no extensions, typed in C
    except msgspec.DecodeError:
        return _decode_any(raw)  # extensions, an older layout, a newer one, or none: decided field by field
    if wire.schemaversion > SCHEMA_VERSION:
        raise NewerSchema(f"envelope schema version {wire.schemaversion} is newer than this code ({SCHEMA_VERSION})")
    return _envelope(wire, {})


def decode_lean(raw: bytes | str) -> Wire | Envelope:
    """decode() without building the Envelope in the common case (this layout, no extension
    attributes): the Wire as decoded, which `envelope_of` turns into the Envelope decode() gives.
    Any other record is decode()'s Envelope; the same errors for the same records. For rebuilds,
    which read a few attributes of millions of events (projections.meter_bulk)."""
    try:
        wire = _CURRENT.decode(raw)
    except msgspec.DecodeError:
        return _decode_any(raw)
    if wire.schemaversion > SCHEMA_VERSION:
        raise NewerSchema(f"envelope schema version {wire.schemaversion} is newer than this code ({SCHEMA_VERSION})")
    return wire


def envelope_of(wire: Wire) -> Envelope:
    """The Envelope of a Wire that decode_lean gave (it has no extension attributes)."""
    return _envelope(wire, {})


def _envelope(wire: Wire, extensions: dict[str, Any]) -> Envelope:
    key_id = wire.actorkeyid
    return Envelope(
        id=wire.omniid,
        type=wire.type,
        tenant_id=wire.tenantid,
        source=wire.source,
        source_id=wire.id,
        event_time=wire.time,
        recorded_time=wire.recordedtime,
        data=wire.data,
        subject=wire.subject,
        data_subject_id=wire.datasubjectid,
        actor=NO_ACTOR if key_id is None else Actor(key_id),
        traceparent=wire.traceparent,
        schema_version=wire.schemaversion,
        extensions=extensions,
    )


def _decode_any(raw: bytes | str) -> Envelope:
    body = orjson.loads(raw)
    if not isinstance(body, dict):
        raise TypeError(f"an envelope is a JSON object, not {type(body).__name__}")
    return upcast(body)


class NewerSchema(Exception):
    """Written by newer code: upgrade this reader rather than skip the event."""


def upcast(body: dict[str, Any]) -> Envelope:
    """The envelope of a decoded record of any layout this code knows (a CloudEvent of this layout,
    or layout 1), brought up to this version. NewerSchema for a newer one."""
    if "specversion" in body:
        version = body.get("schemaversion", SCHEMA_VERSION)
        layout = _from_cloudevent
    else:
        version = body.get("schema_version", 1)
        layout = _from_layout_1
    if type(version) is not int:
        raise TypeError(f"an envelope's schema version is an integer, not {type(version).__name__}")
    if version > SCHEMA_VERSION:
        raise NewerSchema(f"envelope schema version {version} is newer than this code ({SCHEMA_VERSION})")
    return layout(body, version)


def _from_cloudevent(body: dict[str, Any], _version: int) -> Envelope:
    """This layout with extension attributes: its own attributes typed and checked as in the fast
    path, in C (msgspec.ValidationError is a ValueError), every other one kept as an extension.
    About 4 µs rather than 1: most usage events have no extensions."""
    names = list(filterfalse(_IS_FIELD, body))  # in their order, in C (a comprehension took 1.2 µs)
    return _envelope(msgspec.convert(body, _Attributes), {name: body[name] for name in names})


def _from_layout_1(body: dict[str, Any], version: int) -> Envelope:
    """Layout 1: Omni's own JSON, every attribute present (null when unset)."""
    actor = body.get("actor") or {}
    return Envelope(
        id=body["id"],
        type=body["type"],
        schema_version=version,
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


class _Recorded(msgspec.Struct):
    """Only when a record was recorded, in either layout (replays cut the log at a moment)."""

    recordedtime: datetime | None = None  # this layout
    recorded_time: datetime | None = None  # layout 1


_RECORDED = msgspec.json.Decoder(_Recorded)


def recorded_time_of(raw: bytes) -> datetime | None:
    """When the record's event was recorded, read without decoding the rest; None if it is not an
    envelope (such a record is dead-lettered by the folds, whenever it came)."""
    try:
        found = _RECORDED.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    moment = found.recordedtime or found.recorded_time
    return moment if moment is not None and moment.tzinfo is not None else None
