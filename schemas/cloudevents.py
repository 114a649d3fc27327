"""CloudEvents 1.0 (JSON format) as accepted by POST /v1/events."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"

# \Z, not $: in Python `$` also matches before a trailing newline.
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}\Z")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")


class CloudEvent(BaseModel):
    """One usage fact. Extension attributes are kept; `traceparent` joins the trace."""

    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=False)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=1024)
    type: str = Field(min_length=1, max_length=256)
    subject: str = Field(min_length=1, max_length=256)
    time: AwareDatetime | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: Any = None

    def extensions(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def extension_errors(extensions: Mapping[str, Any]) -> list[str]:
    """Extension names (a CloudEvent's `extensions()`) must follow the CloudEvents naming rule."""
    problems = []
    for name, value in extensions.items():
        if not _EXTENSION_NAME.match(name):
            problems.append(f"extension attribute {name!r} must be 1-20 lowercase letters or digits")
        if name == "traceparent" and not (isinstance(value, str) and _TRACEPARENT.match(value)):
            problems.append("traceparent must be a W3C trace context header value")
    return problems


def event_time_or(event: CloudEvent, received: datetime) -> datetime:
    return event.time if event.time is not None else received
