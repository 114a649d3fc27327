"""Admission of usage events: validation, the acceptance window, the envelope.

Pure: the caller passes the clock reading and fresh ids in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError

from commands.errors import Invalid
from schemas.cloudevents import CloudEvent, extension_errors
from schemas.envelope import Actor, Envelope
from schemas.text import holds_nul

FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """Events older than `window` or further ahead than `future` are refused.

    De-duplication keeps each (source, id) until event time + window, so an
    event accepted once can never be accepted again while it is admissible.
    """

    window: timedelta = timedelta(days=7)
    future: timedelta = FUTURE_TOLERANCE


def _reason(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "event"
    return f"{where}: {error.get('msg', 'invalid')}"


def admit(
    items: Sequence[Any],
    *,
    tenant_id: str,
    actor: Actor,
    received: datetime,
    policy: AdmissionPolicy,
    new_id: Callable[[], str],
    traceparent: str | None = None,
    may_hold_nul: bool = True,
) -> list[Envelope]:
    """Turn raw CloudEvents into envelopes, or reject the whole batch naming each bad event.

    `may_hold_nul=False` tells that no text holds a NUL character (e.g. the request body has
    no `\\u0000`), which saves looking through every event for one.
    """
    errors: list[dict[str, Any]] = []
    envelopes: list[Envelope] = []
    oldest, newest = received - policy.window, received + policy.future
    for index, (item, event) in enumerate(zip(items, _validated(items), strict=True)):
        if event is None:
            errors.append({"index": index, "reason": "an event must be a JSON object"})
            continue
        if isinstance(event, ValidationError):
            errors.append({"index": index, "id": _safe_id(item), "reasons": [_reason(e) for e in event.errors()]})
            continue
        extensions = event.extensions()
        problems = extension_errors(extensions)
        if may_hold_nul and holds_nul(item):
            problems.append("text may not contain NUL characters (\\u0000): the views cannot store them")
        moment = event.time or received
        if moment < oldest:
            problems.append(f"time {moment.isoformat()} is older than the acceptance window ({policy.window})")
        elif moment > newest:
            problems.append(f"time {moment.isoformat()} is more than {policy.future} in the future")
        if problems:
            errors.append({"index": index, "id": event.id, "reasons": problems})
            continue
        envelopes.append(
            Envelope(
                id=new_id(),
                type=event.type,
                tenant_id=tenant_id,
                source=event.source,
                source_id=event.id,
                subject=event.subject,
                event_time=moment,
                recorded_time=received,
                data=event.data,
                actor=actor,
                traceparent=extensions.pop("traceparent", None) or traceparent,
                extensions=extensions,
            )
        )
    if errors:
        raise Invalid(f"{len(errors)} of {len(items)} events are invalid; none were accepted", errors)
    return envelopes


_BATCH = TypeAdapter(list[CloudEvent])


def _validated(items: Sequence[Any]) -> list[CloudEvent | ValidationError | None]:
    """Each item as a CloudEvent, or why it is not one (None: not even a JSON object).

    The whole batch in one call first: about half the cost of one call per event. Only a batch
    with a bad event in it pays for the second pass, which tells each event's own errors.
    """
    try:
        return list(_BATCH.validate_python(items))
    except ValidationError:
        pass
    results: list[CloudEvent | ValidationError | None] = []
    for item in items:
        if not isinstance(item, dict):
            results.append(None)
            continue
        try:
            results.append(CloudEvent.model_validate(item))
        except ValidationError as invalid:
            results.append(invalid)
    return results


def _safe_id(item: dict[str, Any]) -> str | None:
    value = item.get("id")
    return value if isinstance(value, str) else None


def expires_at(envelope: Envelope, policy: AdmissionPolicy) -> datetime:
    """Until when the de-duplication entry for this event must be kept."""
    return envelope.event_time + policy.window + policy.future
