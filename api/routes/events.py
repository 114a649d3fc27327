"""POST /v1/events: CloudEvents in, durable on the log, exactly once.

One event in structured mode, a batch, or one event in the HTTP binding's binary mode (`ce-*`
headers; api/cloudevents_http.py), each with data or data_base64.

Admission (parsing, validation, encoding) is CPU work that holds the event loop, and so every
other request, while it runs. A small body is admitted on the loop: a hop to a worker thread costs
about a tenth of a small request's CPU. A body over OFF_LOOP_BYTES is admitted in a worker thread,
and parsed one event at a time: orjson holds the GIL for a whole call, so a thread alone frees
nothing while one C call parses 5 MB (up to about 100 ms for a body of tiny values), but between
two events' calls the loop gets its turn (within the 5 ms switch interval). No event is parsed
whole if it is larger than an event may be (OMNI_MAX_EVENT_BYTES).
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import uuid_utils
from fastapi import APIRouter, Request, Response

from api import tracing
from api.cloudevents_http import Unreadable, binary_id, from_binary, is_binary_mode, with_readable_data
from api.deps import PlatformDep, TenantDep
from api.ingest_rates import IngestRates
from api.problems import Problem
from api.roles import RoleFirstRoute
from commands.errors import Invalid
from commands.ingest import Admitted, TooLarge, admit_encoded, expires_at
from omni import failpoints, metrics
from omni.personal_data import KeysMissing
from schemas.api import IngestResult
from schemas.cloudevents import BATCH, STRUCTURED
from schemas.envelope import Actor
from schemas.text import json_holds_nul
from streams.log import LogUnavailable

router = APIRouter(prefix="/v1", tags=["events"], route_class=RoleFirstRoute)

_SINGLE = {STRUCTURED, "application/json"}
OFF_LOOP_BYTES = 256 * 1024  # bodies larger than this are admitted in a worker thread, event by event
_ARRAY = re.compile(rb"[ \t\n\r]*\[")
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])  # a JSON array's items as slices of the body, unparsed


def parse_items(content_type: str, body: bytes, max_events: int, *, max_event_bytes: int | None = None) -> list[Any]:
    """The body's events. With `max_event_bytes`, a batch is parsed one event at a time, and an event
    larger than that is not parsed at all: a TooLarge stands in its place."""
    media = content_type.split(";")[0].strip().lower()
    if media not in _SINGLE and media != BATCH:
        raise Problem(
            415,
            "Unsupported media type",
            f"Send {STRUCTURED} (one event) or {BATCH} (a JSON array of events).",
            kind="unsupported-media-type",
        )
    try:
        if max_event_bytes is not None:
            parsed = _parsed_event_by_event(body, max_events, max_event_bytes)
        else:
            parsed = orjson.loads(body)
    except orjson.JSONDecodeError as broken:
        raise Problem(400, "Malformed JSON", str(broken), kind="malformed-json") from broken
    if media == BATCH or (media == "application/json" and isinstance(parsed, list)):
        if not isinstance(parsed, list):
            raise Problem(400, "Malformed batch", "A batch is a JSON array of events.", kind="malformed-batch")
        if not parsed:
            raise Problem(422, "Empty batch", "A batch needs at least one event.", kind="empty-batch", location="body")
        _check_count(len(parsed), max_events)
        return parsed
    if not isinstance(parsed, dict | TooLarge):
        raise Problem(400, "Malformed event", "A single event is a JSON object.", kind="malformed-event")
    return [parsed]


def _check_count(count: int, max_events: int) -> None:
    if count > max_events:
        raise Problem(
            413,
            "Batch too large",
            f"A batch may hold at most {max_events} events; got {count}.",
            kind="batch-too-large",
        )


def _parsed_event_by_event(body: bytes, max_events: int, max_event_bytes: int) -> Any:
    """A JSON array as its items, each parsed alone (one larger than `max_event_bytes`: a TooLarge);
    anything else as one event (a TooLarge if it is larger than that). Where msgspec, which finds
    the items, and orjson disagree (an item orjson cannot parse), orjson's verdict on the whole body
    stands."""
    if not _ARRAY.match(body):
        return TooLarge(len(body), max_event_bytes) if len(body) > max_event_bytes else orjson.loads(body)
    try:
        raws = _RAW_ITEMS.decode(body)  # one C pass that checks the JSON and finds each item
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return orjson.loads(body)  # raises with orjson's own words, or parses what msgspec would not
    _check_count(len(raws), max_events)
    items: list[Any] = []
    try:
        for raw in raws:
            text = memoryview(raw)
            items.append(TooLarge(len(text), max_event_bytes) if len(text) > max_event_bytes else orjson.loads(text))
    except orjson.JSONDecodeError:
        return orjson.loads(body)
    return items


def _binary_event(headers: list[tuple[str, str]], body: bytes) -> dict[str, Any]:
    try:
        return from_binary(headers, body)
    except Unreadable as unreadable:
        error = {"index": 0, "id": binary_id(headers), "reasons": [str(unreadable)]}
        raise Invalid("1 of 1 events is invalid; none were accepted", [error]) from None


def _with_readable_data(items: list[Any]) -> list[Any]:
    """The items with any `data_base64` decoded into `data` (the same list when none has one)."""
    if not any(isinstance(item, dict) and "data_base64" in item for item in items):
        return items
    readable, errors = [], []
    for index, item in enumerate(items):
        try:
            readable.append(with_readable_data(item))
        except Unreadable as unreadable:
            errors.append(
                {"index": index, "id": item.get("id") if isinstance(item.get("id"), str) else None, "reasons": [str(unreadable)]}
            )
    if errors:
        raise Invalid(f"{len(errors)} of {len(items)} events are invalid; none were accepted", errors)
    return readable


def _too_fast(tenant_id: str, rates: IngestRates, wait: int) -> Problem:
    metrics.INGEST_RATE_LIMITED.inc()
    return Problem(
        429,
        "Ingest rate exceeded",
        f"tenant {tenant_id} sends more than {rates.per_second:g} events a second to this API process "
        f"(OMNI_TENANT_EVENTS_PER_SECOND); nothing of this request was recorded: send it again after "
        f"{wait} s, or in smaller batches.",
        kind="ingest-rate-exceeded",
        headers={"Retry-After": str(wait)},
    )


@router.post("/events", status_code=202, response_model=IngestResult, responses={413: {}, 415: {}, 422: {}, 429: {}, 503: {}})
async def ingest_events(request: Request, platform: PlatformDep, principal: TenantDep) -> Response:
    """Accept one CloudEvent or a batch; 202 once every accepted event is durable on the log."""
    settings = platform.settings
    rates: IngestRates = request.app.state.ingest_rates
    tenant_id = principal.tenant_id or ""
    if rates.empty(tenant_id):  # refused before its events are read
        raise _too_fast(tenant_id, rates, 1)
    body = await request.body()  # bounded in size and time by the edge (api/edge.py), as on every route
    policy = platform.policy
    content_type = request.headers.get("content-type", "")
    actor = Actor(
        key_id=principal.key_id,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )
    received = datetime.now(UTC)
    # The records carry the `send` span's context (OpenTelemetry's messaging conventions): the
    # worker's `process` span continues it (streams/tracing.py).
    with tracing.send_span(platform.topics.usage, platform.settings.mode.value) as send:
        traceparent = tracing.traceparent_of(send) or getattr(request.state, "traceparent", None)
        large = len(body) > OFF_LOOP_BYTES or len(body) > policy.max_event_bytes

        binary = is_binary_mode(request.headers)
        headers = request.headers.items() if binary else []  # every one as sent: from_binary refuses repeats

        personal = platform.personal

        def admission(may_block: bool) -> Admitted:
            if binary:
                items = [_binary_event(headers, body)]
            else:
                items = parse_items(
                    content_type, body, settings.max_batch_events, max_event_bytes=policy.max_event_bytes if large else None
                )
            readable = _with_readable_data(items)
            return admit_encoded(
                readable,
                tenant_id=tenant_id,
                actor=actor,
                received=received,
                policy=policy,
                new_id=lambda: str(uuid_utils.uuid7()),
                traceparent=traceparent,
                # The body tells about NUL only where it holds every event's text as JSON.
                may_hold_nul=binary or readable is not items or json_holds_nul(body),
                protect=lambda envelopes: personal.protect(envelopes, may_block=may_block),
            )

        if large:
            admitted = await asyncio.to_thread(admission, True)
        else:
            try:
                admitted = admission(False)
            except KeysMissing:  # a person's data key is not in memory: read (or made) off the event loop
                admitted = await asyncio.to_thread(admission, True)
        envelopes = admitted.envelopes
        if wait := rates.wait_for(tenant_id, len(envelopes)):
            raise _too_fast(tenant_id, rates, wait)
        try:
            accepted = await platform.sink.ingest(envelopes, [expires_at(e, policy) for e in envelopes], admitted.values)
        except LogUnavailable:
            rates.give_back(tenant_id, len(envelopes))  # nothing recorded: its retry is not charged twice
            metrics.LOG_UNAVAILABLE.inc()
            raise
        send.set_attribute("messaging.batch.message_count", len(envelopes))
    failpoints.hit(failpoints.INGEST_AFTER_APPEND)
    count = sum(accepted)
    metrics.labelled(metrics.EVENTS, "accepted").inc(count)
    metrics.labelled(metrics.EVENTS, "duplicate").inc(len(accepted) - count)
    # An IngestResult, written directly: up to 1,000 pydantic models per request, validated
    # again as the response model, cost more than the rest of the answer.
    answer = {
        "accepted": count,
        "duplicates": len(accepted) - count,
        "results": [
            {"index": i, "id": e.source_id, "status": "accepted" if ok else "duplicate"}
            for i, (e, ok) in enumerate(zip(envelopes, accepted, strict=True))
        ],
    }
    return Response(orjson.dumps(answer), status_code=202, media_type="application/json")
