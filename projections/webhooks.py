"""Webhooks, the pure parts: the endpoints' view (folded from control events), what a delivery
sends (the Standard Webhooks message and its signature), and when a failed one is tried again.

Standard Webhooks (https://www.standardwebhooks.com): each delivery is a POST whose headers are
`webhook-id` (the notice's id, the same on every attempt: receivers de-duplicate on it),
`webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature`: `v1,` and the base64
HMAC-SHA256, keyed with the secret's decoded bytes, of `{id}.{timestamp}.{body}`. The secret is
`whsec_` and the base64 of its bytes. While secrets rotated out are still valid (two at most), the
header holds the current secret's signature and then theirs, space-separated, as the specification
allows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.envelope import Envelope, format_time

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
ENDPOINT_CREATED, ENDPOINT_DELETED = "omni.webhook_endpoint.created", "omni.webhook_endpoint.deleted"
SECRET_ROTATED = "omni.webhook_endpoint.secret_rotated"
# After the first attempt fails: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, then given up (7 attempts, about 17.6 h).
RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000)


# The secret and the signature ----------------------------------------------------------------


def secret_text(key: bytes) -> str:
    """The secret as it is shown once to its endpoint's owner."""
    return SECRET_PREFIX + base64.b64encode(key).decode()


def secret_key(text: str) -> bytes:
    """The signing key a secret's text holds (raises ValueError for one that is not `whsec_` base64)."""
    if not text.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    signed = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()


def headers(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """A delivery's headers, signed with each of `keys` (the current secret first)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(key, message_id, timestamp, body) for key in keys),
        "content-type": "application/json",
    }


def message(kind: str, notice_id: str, data: dict[str, Any]) -> bytes:
    """The body of a notice's deliveries: `type`, `timestamp` (when it happened) and `data`, the
    notice as GET /v1/notifications shows it. The same bytes on every attempt."""
    notice = {"id": notice_id, "type": kind, **data}
    return orjson.dumps({"type": kind, "timestamp": notice.get("occurred_at"), "data": notice})


# Retries ---------------------------------------------------------------------------------------


def parse_schedule(text: str) -> tuple[float, ...]:
    """OMNI_WEBHOOKS_RETRY_SCHEDULE: seconds to wait after each failed attempt, comma-separated."""
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError("a comma-separated list of seconds, such as 5,300,1800") from None
    if any(d < 0 or d != d or d == float("inf") for d in delays):
        raise ValueError("each delay is a finite number of seconds, 0 or more")
    return delays


def retry_delay(failed_attempts: int, schedule: Sequence[float] = RETRY_SCHEDULE) -> float | None:
    """How long after its `failed_attempts`-th failed attempt a delivery is tried again; None once
    the schedule is spent: it is given up (failed)."""
    if failed_attempts < 1 or failed_attempts > len(schedule):
        return None
    return float(schedule[failed_attempts - 1])


def attempt_error(status: int | None, error: str | None) -> str | None:
    """What an attempt's record says went wrong (None: delivered)."""
    if error is not None:
        return error
    if status is None:
        return "no answer"
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed"
    return f"HTTP {status}"


# The endpoints' view ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointAdded:
    endpoint_id: str
    owner: str
    url: str
    description: str | None
    created_at: str


@dataclass(frozen=True, slots=True)
class EndpointRemoved:
    endpoint_id: str
    owner: str
    deleted_at: str


Change = EndpointAdded | EndpointRemoved


def changes(event: Envelope) -> list[Change]:
    """What one control-plane event changes in the webhook endpoints' view. Other types change nothing."""
    data: dict[str, Any] = event.data or {}
    match event.type:
        case "omni.webhook_endpoint.created":
            at = format_time(event.event_time)
            return [EndpointAdded(data["id"], data["owner"], data["url"], data.get("description"), at)]
        case "omni.webhook_endpoint.deleted":
            return [EndpointRemoved(data["id"], data["owner"], format_time(event.event_time))]
    return []
