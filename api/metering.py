"""The platform meters itself: every authenticated HTTP request becomes an `api_call` event.

Every request is counted in Prometheus metrics; only a caller with a valid key gets a durable
`api_call` record (under its tenant, or `_platform` for the admin). Anonymous traffic stays out
of the log, which keeps events forever.

The records go to a topic of their own (Topics.api_calls), not to the tenants' usage topic, whose
consumers expect the tenants' own facts only; the meters fold both. They name the key that
called (`actorkeyid`, and the subject) but not the caller's IP address nor its user agent:
personal data, which a topic that keeps everything forever could never erase.

Requests are recorded off the request path: a bounded buffer flushed in
batches, so a slow log never slows the API, and a full buffer drops the
oldest telemetry rather than blocking callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, datetime

import uuid_utils
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.tracing import method_label
from commands.control_plane import PLATFORM, Principal
from omni import metrics
from schemas.envelope import Actor, Envelope, encode
from schemas.topics import API_CALL_SOURCE, API_CALL_TYPE
from streams.log import EventLog, outgoing

log = logging.getLogger(__name__)


class ApiCallRecorder:
    def __init__(self, log_: EventLog, *, capacity: int = 50_000, every: float = 0.2) -> None:
        self.log = log_
        self.buffer: deque[Envelope] = deque(maxlen=capacity)
        self.every = every
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def record(self, envelope: Envelope) -> None:
        self.buffer.append(envelope)

    async def flush(self) -> None:
        while self.buffer:
            batch = [self.buffer.popleft() for _ in range(min(len(self.buffer), 1000))]
            try:
                await self.log.append(self.log.topics.api_calls, [outgoing(e.tenant_id, e, encode(e)) for e in batch])
            except Exception as failure:
                self.buffer.extendleft(reversed(batch))
                log.warning("api_call events waiting for the log: %s", failure)
                return

    async def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.every)
            await self.flush()

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._loop(), name="api-call-recorder")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=5)


class ApiCallMiddleware:
    """Plain ASGI rather than `@app.middleware("http")`, whose task group and memory streams
    cost more per request than the recording itself."""

    def __init__(self, app: ASGIApp, recorder: ApiCallRecorder | None) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered: list[tuple[int, float]] = []  # (status, latency ms) once the response starts

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append((message["status"], (time.perf_counter() - started) * 1000))
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            # Starlette's outermost layer turns this into the 500; count it here, or it is invisible.
            if not answered:
                answered.append((500, (time.perf_counter() - started) * 1000))
            raise
        finally:
            if answered:
                self.record(scope, *answered[0])

    def record(self, scope: Scope, status: int, latency_ms: float) -> None:
        """From the scope itself: a Request (and its State) per request cost more than reading three keys."""
        state = scope.get("state", {})
        template = getattr(scope.get("route"), "path", None) or "unmatched"
        record_call(
            self.recorder, template, scope["method"], status, latency_ms, state.get("principal"), state.get("traceparent")
        )


def record_call(
    recorder: ApiCallRecorder | None,
    template: str,
    method: str,
    status: int,
    latency_ms: float,
    principal: Principal | None,
    traceparent: str | None,
) -> None:
    """Count a request in the HTTP metrics and, for a caller with a key, record its `api_call` event
    (unless `recorder` is None: OMNI_METER_API_CALLS=false, where requests are counted all the same)."""
    metrics.labelled(metrics.HTTP_REQUESTS, template, method_label(method), str(status)).inc()
    metrics.labelled(metrics.HTTP_LATENCY, template).observe(latency_ms / 1000)
    if principal is None or recorder is None:
        return  # counted above; never one durable record per anonymous request
    tenant = PLATFORM if principal.is_admin else principal.tenant_id
    now = datetime.now(UTC)
    request_id = str(uuid_utils.uuid7())
    recorder.record(
        Envelope(
            id=request_id,
            type=API_CALL_TYPE,
            tenant_id=tenant or PLATFORM,
            source=API_CALL_SOURCE,
            source_id=request_id,
            subject=principal.key_id,
            event_time=now,
            recorded_time=now,
            actor=Actor(key_id=principal.key_id),  # no IP address nor user agent: see the module's doc
            traceparent=traceparent,
            data={
                "route": template,
                "method": method,
                "status": status,
                "latency_ms": round(latency_ms, 3),
            },
        )
    )


def install(app: FastAPI, recorder: ApiCallRecorder | None) -> None:
    """Count every request in the HTTP metrics, and record callers' `api_call` events with `recorder`
    (None: OMNI_METER_API_CALLS=false; the metrics, which the platform's alerts read, stay)."""
    metrics.seed_http_requests()
    app.add_middleware(ApiCallMiddleware, recorder=recorder)
