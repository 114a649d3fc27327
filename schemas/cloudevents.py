"""CloudEvents 1.0 (JSON format) as accepted by POST /v1/events."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetPydanticSchema, field_validator
from pydantic_core import core_schema

from schemas.text import NO_NUL_PATTERN

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"

# \Z, not $: in Python `$` also matches before a trailing newline.
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}\Z")
# W3C trace context, version 00's layout: version ff, an all-zero trace id and an all-zero parent
# (span) id are invalid. Lowercase hex only.
# CloudEvents' `dataschema` is a URI (RFC 3986: a scheme, then the rest), printable ASCII without spaces.
DATASCHEMA = r"^[A-Za-z][A-Za-z0-9+.\-]*:[!-~]*$"
_DATASCHEMA = re.compile(DATASCHEMA.removesuffix("$") + r"\Z")
_TRACEPARENT = re.compile(r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}\Z")
# RFC 3339 date-time (section 5.6): seconds required, any fraction, Z or a +hh:mm offset. T and Z
# may be lowercase, and the separator a space (its note on readability). [0-9], not \d: a Python \d
# takes every script's digits. Checked in pydantic-core (Rust) before its datetime parsing, which
# would also take a number, or digits, as Unix seconds or milliseconds (guessing which), and times
# without seconds: a Python validator here cost 0.9 µs per event, this one 0.1. (In Rust, `$` is
# the end of the text: no trailing newline passes.)
RFC_3339 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
# A CloudEvent's `subject`, and any person's id (a data class may name the person by a text value
# under `data` instead): at most this many characters, what a GDPR request takes (schemas.gdpr), so
# every person admitted can exercise their rights.
SUBJECT_MAX_LENGTH = 256
# A CloudEvent's `type`: any text of 1 to this many characters without NUL (admission refuses NUL in
# any text). Meters and data classes take every type admission takes (`admissible_type`).
TYPE_MAX_LENGTH = 256
RFC_3339_REASON = (
    "must be an RFC 3339 timestamp as text, with its offset: 2024-05-01T12:00:00Z or 2024-05-01T14:00:00+02:00 "
    "(a number, or a time without Z or an offset, is not taken)"
)


def _rfc_3339_text(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    text = core_schema.str_schema(pattern=RFC_3339, strict=True)
    return core_schema.chain_schema(
        [
            core_schema.custom_error_schema(text, custom_error_type="rfc_3339", custom_error_message=RFC_3339_REASON),
            handler(source),
        ]
    )


Rfc3339Time = Annotated[AwareDatetime, GetPydanticSchema(_rfc_3339_text)]


class CloudEvent(BaseModel):
    """One usage fact. Extension attributes are kept; `traceparent` joins the trace."""

    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=False)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=1024)
    type: str = Field(min_length=1, max_length=TYPE_MAX_LENGTH)
    subject: str = Field(min_length=1, max_length=SUBJECT_MAX_LENGTH)
    time: Rfc3339Time | None = None
    datacontenttype: str | None = None
    dataschema: str | None = Field(default=None, max_length=2048, json_schema_extra={"format": "uri", "pattern": DATASCHEMA})
    data: Any = None

    @field_validator("dataschema")
    @classmethod
    def _dataschema_is_a_uri(cls, value: str | None) -> str | None:
        """CloudEvents: if present, a non-empty URI. A relative reference (`schemas/v1`) names no schema
        a consumer of the log could find."""
        if value is not None and not _DATASCHEMA.match(value):
            raise ValueError("dataschema must be an absolute URI (RFC 3986), such as https://example.com/schemas/chat.json")
        return value

    def extensions(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def extension_errors(extensions: Mapping[str, Any]) -> list[str]:
    """Extension names (a CloudEvent's `extensions()`) must follow the CloudEvents naming rule."""
    problems = []
    for name, value in extensions.items():
        if not _EXTENSION_NAME.match(name):
            problems.append(f"extension attribute {name!r} must be 1-20 lowercase letters or digits")
        if name == "traceparent" and not (isinstance(value, str) and _TRACEPARENT.match(value)):
            problems.append("traceparent must be a valid W3C trace context header value (version 00's layout, not all-zero ids)")
    return problems


def admissible_type(text: str) -> bool:
    """Whether admission takes `text` as an event's `type`."""
    return 0 < len(text) <= TYPE_MAX_LENGTH and "\x00" not in text


def event_time_or(event: CloudEvent, received: datetime) -> datetime:
    return event.time if event.time is not None else received


def documented_schema() -> dict[str, Any]:
    """A CloudEvent as POST /v1/events takes it, in JSON Schema: what the model checks, and what
    admission checks besides (extension names, traceparent's layout, no NUL in text)."""
    schema = CloudEvent.model_json_schema()
    properties = schema["properties"]
    for name in ("id", "source", "type", "subject"):
        properties[name]["pattern"] = NO_NUL_PATTERN
    properties["time"] = {
        "anyOf": [{"type": "string", "format": "date-time", "pattern": RFC_3339}, {"type": "null"}],
        "description": "RFC 3339, within the acceptance window (7 days back, 5 minutes ahead, by default); "
        "the time of receipt when absent or null",
    }
    properties["traceparent"] = {
        "anyOf": [{"type": "string", "pattern": "^" + _TRACEPARENT.pattern.removesuffix("\\Z") + "$"}, {"type": "null"}],
        "description": "W3C trace context: the event joins this trace (null: unset, as any attribute)",
    }
    properties["data"] = {"description": "Any JSON: text without NUL characters, nested at most OMNI_MAX_JSON_DEPTH levels"}
    properties["data_base64"] = {
        "anyOf": [{"type": "string", "contentEncoding": "base64"}, {"type": "null"}],
        "description": "The data as base64 (the JSON format's binary data), in place of `data`: JSON, or text "
        "(`text/*`), by `datacontenttype`; null: unset",
    }
    # Extension attributes: any other lowercase alphanumeric name (CloudEvents' naming rule).
    schema["patternProperties"] = {"^[a-z0-9]{1,20}$": {}}
    schema["additionalProperties"] = False
    return schema
