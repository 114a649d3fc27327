"""Shared helpers for every tier."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def cloud_event(
    event_id: str,
    *,
    type_: str = "inference",
    subject: str = "user-1",
    source: str = "gateway",
    time: datetime | None = None,
    data: Any = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {"specversion": "1.0", "id": event_id, "source": source, "type": type_, "subject": subject}
    if time is not None:
        event["time"] = time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if data is not None:
        event["data"] = data
    return event
