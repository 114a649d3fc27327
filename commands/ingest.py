"""Admission of usage events: validation, the acceptance window, the envelope and its wire form.

Pure: the caller passes the clock reading and fresh ids in.

Admission also encodes each envelope, so an event that cannot be stored (nested too deep for the
encoder, larger than a Kafka record may be) is refused here, in its own request, with a reason that
names the limit. Encoded later, inside a commit shared with other requests (the embedded log's group
commit, a Kafka produce batch), it failed them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
from pydantic import TypeAdapter, ValidationError

from commands.errors import Invalid
from schemas.cloudevents import CloudEvent, extension_errors
from schemas.envelope import RESERVED, Actor, Envelope, encode
from schemas.text import json_holds_nul, nests_deeper

FUTURE_TOLERANCE = timedelta(minutes=5)
# OMNI_MAX_JSON_DEPTH: how many levels of arrays and objects `data` or an extension attribute's
# value may nest (`{"a": [1]}` is two). orjson encodes at most 254 levels in all.
MAX_DEPTH = 32
# The scheme of the sources Omni records events under itself (omni://quotas, omni://api, ...): a
# client's event under one would share the de-duplication identity (tenant, source, id) of one of
# them, and one of the two would be dropped as the other's duplicate.
OMNI_SOURCES = "omni:"
# OMNI_MAX_EVENT_BYTES: an event's JSON as sent, and its envelope as stored, at most. Kafka refuses a
# record larger than the broker's message.max.bytes (1,048,588 by default), failing its whole batch.
MAX_EVENT_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """Events older than `window` or further ahead than `future` are refused.

    De-duplication keeps each (source, id) until event time + window, so an
    event accepted once can never be accepted again while it is admissible.
    """

    window: timedelta = timedelta(days=7)
    future: timedelta = FUTURE_TOLERANCE
    max_depth: int = MAX_DEPTH
    max_event_bytes: int = MAX_EVENT_BYTES


@dataclass(frozen=True, slots=True)
class TooLarge:
    """Stands for a batch item whose JSON text alone is over the limit: refused without parsing it."""

    size: int
    limit: int

    @property
    def reason(self) -> str:
        return f"the event's JSON is {self.size} bytes; an event may be at most {self.limit} bytes (OMNI_MAX_EVENT_BYTES)"


class Admitted(NamedTuple):
    envelopes: list[Envelope]
    values: list[bytes]  # each envelope's wire form (schemas.envelope.encode), for the log


def _reason(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "event"
    return f"{where}: {error.get('msg', 'invalid')}"


def admit(items: Sequence[Any], **options: Any) -> list[Envelope]:
    """admit_encoded's envelopes alone (what callers that do not append need: tests, benchmarks)."""
    return admit_encoded(items, **options).envelopes


def admit_encoded(
    items: Sequence[Any],
    *,
    tenant_id: str,
    actor: Actor,
    received: datetime,
    policy: AdmissionPolicy,
    new_id: Callable[[], str],
    traceparent: str | None = None,
    may_hold_nul: bool = True,
    protect: Callable[[list[Envelope]], None] | None = None,
) -> Admitted:
    """Turn raw CloudEvents into envelopes and their wire forms, or reject the whole batch naming
    each bad event. An item may be a TooLarge in place of an event too large to parse.

    `may_hold_nul=False` tells that no text holds a NUL character (e.g. the request body has
    none: schemas.text.json_holds_nul), which saves looking through every event for one.

    `protect` seals the envelopes' personal values in place (omni.personal_data), before they are
    encoded and measured: what the log stores is the sealed form.
    """
    errors: list[dict[str, Any]] = []
    if actor.ip is not None or actor.user_agent is not None:
        # The usage topic keeps events forever, so nothing personal goes there: only the key.
        actor = Actor(actor.key_id)
    envelopes: list[Envelope] = []
    positions: list[int] = []  # each envelope's index in `items`
    problems_of: list[list[str]] = []  # each envelope's problems so far
    oldest, newest = received - policy.window, received + policy.future
    for index, (item, event) in enumerate(zip(items, _validated(items), strict=True)):
        if type(item) is TooLarge:
            errors.append({"index": index, "reason": item.reason})
            continue
        if event is None:
            errors.append({"index": index, "reason": "an event must be a JSON object"})
            continue
        if isinstance(event, ValidationError):
            errors.append({"index": index, "id": _safe_id(item), "reasons": [_reason(e) for e in event.errors()]})
            continue
        extensions = event.extensions()
        if extensions and None in extensions.values():
            # JSON null is an unset attribute (CloudEvents JSON format, 2.2): not kept, not checked.
            extensions = {name: value for name, value in extensions.items() if value is not None}
        problems = extension_errors(extensions)
        if extensions and not RESERVED.isdisjoint(extensions):
            taken = sorted(RESERVED.intersection(extensions))
            problems += [
                f"extension attribute {name!r} is reserved: Omni writes an attribute of that name on the log" for name in taken
            ]
            for name in taken:  # refused anyway; left out, the envelope can still be encoded and measured
                del extensions[name]
        if event.source[: len(OMNI_SOURCES)].lower() == OMNI_SOURCES:
            problems.append(
                f"source {event.source!r} is Omni's own: the events Omni records itself (consume's usage, "
                "api_call records) take it, and a client's event under it would be taken for one of them"
            )
        if may_hold_nul and _holds_nul(item):
            problems.append(NUL_REFUSED)
        moment = event.time or received
        if moment < oldest:
            problems.append(f"time {moment.isoformat()} is older than the acceptance window ({policy.window})")
        elif moment > newest:
            problems.append(f"time {moment.isoformat()} is more than {policy.future} in the future")
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
        positions.append(index)
        problems_of.append(problems)
    # Flat as sent: sealing (below) turns personal values into small objects of Omni's own, which
    # no depth limit is about.
    flat = [_flat(envelope.data) for envelope in envelopes]
    if protect is not None and not errors:
        protect(envelopes)
    # Encoded in a loop of their own: interleaved with the work above, orjson's buffer is out of
    # cache by the next event, and encoding took 3.1 rather than 2.2 µs an envelope.
    values = _encoded(envelopes)
    max_depth, max_bytes = policy.max_depth, policy.max_event_bytes
    for index, envelope, value, problems, flat_data in zip(positions, envelopes, values, problems_of, flat, strict=True):
        if value is None:  # orjson's recursion limit: all it refuses of what orjson parsed
            problems.append(_too_deep(envelope, max_depth) or "the event cannot be encoded as JSON")
        else:
            # Most events have no extension attributes and flat `data`, which no limit refuses.
            # Otherwise the encoded text is measured: in the envelope `data` sits one level down and
            # extension attributes two, so text nesting deeper than limit + 1 levels breaks the
            # limit only if one of them does, and _too_deep tells which.
            if (envelope.extensions or not flat_data) and nests_deeper(value, max_depth + 1):
                too_deep = _too_deep(envelope, max_depth)
                if too_deep:
                    problems.append(too_deep)
            if len(value) > max_bytes:
                problems.append(too_large_stored(len(value), max_bytes))
        if problems:
            errors.append({"index": index, "id": envelope.source_id, "reasons": problems})
    if errors:
        errors.sort(key=lambda error: error["index"])
        raise Invalid(f"{len(errors)} of {len(items)} events are invalid; none were accepted", errors)
    return Admitted(envelopes, values)  # type: ignore[arg-type]  # no None without an error


NUL_REFUSED = "text may not contain NUL characters (\\u0000): the views cannot store them"


def deeper_than(what: str, limit: int) -> str:
    return f"{what} nests deeper than {limit} levels (OMNI_MAX_JSON_DEPTH)"


def too_large_stored(size: int, limit: int) -> str:
    return f"the event is {size} bytes stored; an event may be at most {limit} bytes (OMNI_MAX_EVENT_BYTES)"


def data_problems(data: Any, policy: AdmissionPolicy) -> list[str]:
    """What admission refuses in a client's event's `data`, for data Omni records from a command's
    body (consume's usage event): text that is not Unicode (a lone surrogate), a NUL character,
    nesting past the limit. Measured on its JSON text, in C, as admission measures it."""
    try:
        text = orjson.dumps(data)
    except orjson.JSONEncodeError as failure:
        if "recursion" in str(failure).lower():  # beyond orjson's 254 levels
            return [deeper_than("data", policy.max_depth)]
        if "integer" in str(failure).lower():  # "Integer exceeds 64-bit range"
            return ["data holds an integer past 64 bits; an event holds integers from -2^63 to 2^63 - 1"]
        return ["data holds text that is not Unicode (a lone surrogate, \\ud800 to \\udfff)"]
    problems = []
    if json_holds_nul(text):
        problems.append(NUL_REFUSED)
    if isinstance(data, dict | list) and nests_deeper(text, policy.max_depth):
        problems.append(deeper_than("data", policy.max_depth))
    return problems


def _encoded(envelopes: list[Envelope]) -> list[bytes | None]:
    """Each envelope's wire form; None for one orjson refuses (nested beyond its 254 levels)."""
    try:
        return [encode(envelope) for envelope in envelopes]  # type: ignore[misc]
    except orjson.JSONEncodeError:
        pass
    values: list[bytes | None] = []
    for envelope in envelopes:
        try:
            values.append(encode(envelope))
        except orjson.JSONEncodeError:
            values.append(None)
    return values


def _holds_nul(item: Any) -> bool:
    """Whether the raw event holds a NUL anywhere (attributes the envelope drops too), found in its
    JSON text: orjson writes a NUL as \\u0000."""
    try:
        return json_holds_nul(orjson.dumps(item))
    except orjson.JSONEncodeError:  # nested beyond orjson's 254 levels: refused as too deep anyway
        return False


_FLAT_SIZE = 16  # a dict or list up to this long is looked through in Python; a longer one is measured


def _flat(value: Any) -> bool:
    """Whether `value` is a scalar, or a short dict or list of scalars: at most one level deep.
    About 0.2 µs for a dict of three scalars, less than half of counting an envelope's brackets."""
    kind = type(value)
    if kind is dict:
        if len(value) > _FLAT_SIZE:
            return False
        value = value.values()
    elif kind is list:
        if len(value) > _FLAT_SIZE:
            return False
    else:
        return True
    for item in value:
        kind = type(item)
        if kind is dict or kind is list:
            return False
    return True


def _too_deep(envelope: Envelope, limit: int) -> str | None:
    parts = [("data", envelope.data), *((f"extension attribute {name!r}", v) for name, v in envelope.extensions.items())]
    for what, value in parts:
        if isinstance(value, dict | list) and _nests_deeper(value, limit):
            return deeper_than(what, limit)
    return None


def _nests_deeper(value: Any, limit: int) -> bool:
    try:
        return nests_deeper(orjson.dumps(value), limit)
    except orjson.JSONEncodeError:  # beyond orjson's 254 levels
        return True


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
