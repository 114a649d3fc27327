"""POST /v1/events: CloudEvents in, durable on the log, exactly once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import uuid_utils
from fastapi import APIRouter, Request, Response

from api.deps import PlatformDep, TenantDep
from api.problems import Problem
from commands.ingest import admit, expires_at
from omni import metrics
from schemas.api import IngestResult
from schemas.cloudevents import BATCH, STRUCTURED
from schemas.envelope import Actor
from schemas.text import NUL_ESCAPE
from streams.log import LogUnavailable

router = APIRouter(prefix="/v1", tags=["events"])

_SINGLE = {STRUCTURED, "application/json"}


async def read_limited(request: Request, limit: int) -> bytes:
    """Read the body, refusing more than `limit` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "Content too large", f"The body may be at most {limit} bytes.", kind="too-large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "Content too large", f"The body may be at most {limit} bytes.", kind="too-large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_items(content_type: str, body: bytes, max_events: int) -> list[Any]:
    media = content_type.split(";")[0].strip().lower()
    if media not in _SINGLE and media != BATCH:
        raise Problem(
            415,
            "Unsupported media type",
            f"Send {STRUCTURED} (one event) or {BATCH} (a JSON array of events).",
            kind="unsupported-media-type",
        )
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as broken:
        raise Problem(400, "Malformed JSON", str(broken), kind="malformed-json") from broken
    if media == BATCH or (media == "application/json" and isinstance(parsed, list)):
        if not isinstance(parsed, list):
            raise Problem(400, "Malformed batch", "A batch is a JSON array of events.", kind="malformed-batch")
        if not parsed:
            raise Problem(422, "Empty batch", "A batch needs at least one event.", kind="empty-batch")
        if len(parsed) > max_events:
            raise Problem(
                413,
                "Batch too large",
                f"A batch may hold at most {max_events} events; got {len(parsed)}.",
                kind="batch-too-large",
            )
        return parsed
    if not isinstance(parsed, dict):
        raise Problem(400, "Malformed event", "A single event is a JSON object.", kind="malformed-event")
    return [parsed]


@router.post("/events", status_code=202, response_model=IngestResult, responses={413: {}, 415: {}, 422: {}, 503: {}})
async def ingest_events(request: Request, platform: PlatformDep, principal: TenantDep) -> Response:
    """Accept one CloudEvent or a batch; 202 once every accepted event is durable on the log."""
    settings = platform.settings
    body = await read_limited(request, settings.max_body_bytes)
    items = parse_items(request.headers.get("content-type", ""), body, settings.max_batch_events)
    actor = Actor(
        key_id=principal.key_id,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )
    received = datetime.now(UTC)
    # Admission is pure CPU work and holds the GIL either way: a hop to a worker thread would add
    # its own cost (about a tenth of a small request's) and free nothing.
    envelopes = admit(
        items,
        tenant_id=principal.tenant_id or "",
        actor=actor,
        received=received,
        policy=platform.policy,
        new_id=lambda: str(uuid_utils.uuid7()),
        traceparent=getattr(request.state, "traceparent", None),
        may_hold_nul=NUL_ESCAPE in body,
    )
    try:
        accepted = await platform.sink.ingest(envelopes, [expires_at(e, platform.policy) for e in envelopes])
    except LogUnavailable:
        metrics.LOG_UNAVAILABLE.inc()
        raise
    count = sum(accepted)
    metrics.EVENTS.labels("accepted").inc(count)
    metrics.EVENTS.labels("duplicate").inc(len(accepted) - count)
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
