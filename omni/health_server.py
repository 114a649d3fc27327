"""Metrics and readiness of `omni worker` and `omni relay`, which serve no API of their own.

A small HTTP server on a thread of its own (so it answers while the process's event loop waits
for Kafka or PostgreSQL) serves:

- `GET /metrics`: the Prometheus samples;
- `GET /readyz`: 200 `{"status": "ready", "checks": {...}}` when every check is "ok", else 503
  (application/problem+json) with each check's reason;
- `GET /healthz`: 200 while the process is up.

A process names its checks up front; each stays "not checked yet" (not ready) until its first
probe. `Prober` runs the probes on the process's event loop, so they see what its own clients
see. `omni_ready{process=...}` follows the same state.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from omni import metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

OK = "ok"
Probe = Callable[[], Awaitable[object]]  # raises (or never answers) while its dependency is away
PROBE_EVERY = 1.0  # seconds between two rounds of probes
PROBE_TIMEOUT = 5.0  # a probe without an answer by then counts as a failure


class Readiness:
    """The named checks of one process and their last outcome; thread-safe."""

    def __init__(self, process: str, checks: Iterable[str]) -> None:
        self.process = process
        self._lock = threading.Lock()
        self._checks = dict.fromkeys(checks, "not checked yet")
        self._details: dict[str, Any] = {}
        self._ready = not self._checks  # a process with nothing to check is ready
        metrics.READY.labels(process).set(1 if self._ready else 0)

    def ok(self, check: str) -> None:
        self.set(check, OK)

    def failed(self, check: str, reason: str) -> None:
        self.set(check, reason[:300] or "failed")

    def set(self, check: str, outcome: str) -> None:
        with self._lock:
            if self._checks.get(check) == outcome:
                return
            self._checks[check] = outcome
            ready = all(v == OK for v in self._checks.values())
            changed, self._ready = ready != self._ready, ready
            reasons = {k: v for k, v in self._checks.items() if v != OK}
        if changed:
            metrics.READY.labels(self.process).set(1 if ready else 0)
            if ready:
                logger.info("%s is ready", self.process)
            else:
                logger.warning("%s is not ready: %s", self.process, reasons)

    def detail(self, name: str, value: Any) -> None:
        """Something /readyz shows beside the checks (e.g. the partitions a worker folds)."""
        with self._lock:
            self._details[name] = value

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._ready

    def report(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            return self._ready, {"checks": dict(self._checks), **self._details}


def in_daemon_thread(work: Callable[[], T]) -> Awaitable[T]:
    """`work()` in a daemon thread of its own, awaited on the running loop.

    For blocking probes (a database query): unlike asyncio.to_thread's pooled threads, one
    stuck on a connection that never answers neither holds a thread the process's own work
    needs nor keeps the process from exiting.
    """
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, failure: BaseException | None) -> None:
        if answer.done():  # cancelled meanwhile
            return
        if failure is not None:
            answer.set_exception(failure)
        else:
            answer.set_result(result)  # type: ignore[arg-type]  # T when there is no failure

    def run() -> None:
        result: T | None = None
        failure: BaseException | None = None
        try:
            result = work()
        except BaseException as raised:  # handed to the awaiting coroutine
            failure = raised
        try:
            loop.call_soon_threadsafe(settle, result, failure)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name="readiness-probe", daemon=True).start()
    return answer


def failure_text(failure: BaseException) -> str:
    return f"unavailable: {type(failure).__name__}: {failure}"


class Prober:
    """Runs each named probe every PROBE_EVERY seconds and records the outcome in `readiness`.

    A probe that has not answered within PROBE_TIMEOUT counts as failed; it is not started again
    while it still runs (a probe waiting in a thread for a database is not stopped by a timeout,
    and must not pile up threads, which the process's own work shares).
    """

    def __init__(self, readiness: Readiness, probes: Mapping[str, Probe]) -> None:
        self.readiness = readiness
        self.probes = dict(probes)
        self._running: dict[str, tuple[asyncio.Task[object], float]] = {}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        while stop is None or not stop.is_set():
            await self.probe_once()
            if stop is None:
                await asyncio.sleep(PROBE_EVERY)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), PROBE_EVERY)
                except TimeoutError:
                    pass

    async def probe_once(self) -> None:
        for name, probe in self.probes.items():
            if name not in self._running:
                self._running[name] = (asyncio.ensure_future(probe()), time.monotonic())
        if not self._running:
            return
        await asyncio.wait([task for task, _ in self._running.values()], timeout=PROBE_TIMEOUT)
        for name, (task, started) in list(self._running.items()):
            if not task.done():
                self.readiness.failed(name, f"unavailable: no answer for {time.monotonic() - started:.0f}s")
                continue
            del self._running[name]
            failure = None if task.cancelled() else task.exception()
            if task.cancelled():
                self.readiness.failed(name, "unavailable: the probe was cancelled")
            elif failure is not None:
                self.readiness.failed(name, failure_text(failure))
            else:
                self.readiness.ok(name)

    def cancel(self) -> None:
        for task, _ in self._running.values():
            task.cancel()
        self._running.clear()


def serve(
    host: str, port: int, readiness: Readiness, setting: str, *, metrics_token: str | None = None
) -> ThreadingHTTPServer | None:
    """Serve /metrics, /readyz and /healthz on host:port from a thread; port 0 serves nothing.
    With `metrics_token` (OMNI_METRICS_TOKEN), /metrics answers only `Authorization: Bearer <token>`.

    A port that cannot be bound is logged, not fatal: the process still does its work.
    """
    if not port:
        return None
    try:
        server = ThreadingHTTPServer((host, port), _handler(readiness, metrics_token))
    except OSError as taken:
        logger.error("cannot serve metrics on port %d of %s (%s): set %s to a free port", port, host, taken, setting)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"{readiness.process}-health", daemon=True).start()
    logger.info("%s serves /metrics and /readyz on http://%s:%d", readiness.process, host, port)
    return server


def _handler(readiness: Readiness, metrics_token: str | None = None) -> type[BaseHTTPRequestHandler]:
    expected = None if metrics_token is None else f"Bearer {metrics_token}".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(with_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(with_body=False)

        def _answer(self, *, with_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                given = self.headers.get("Authorization", "").encode()
                if expected is not None and not hmac.compare_digest(given, expected):
                    refused = {"type": "https://omni.dev/problems/unauthorized", "title": "Unauthorized", "status": 401}
                    self._send(401, "application/problem+json", json.dumps(refused).encode(), with_body)
                else:
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(), with_body)
            elif path == "/readyz":
                ready, report = readiness.report()
                if ready:
                    body = {"status": "ready", "process": readiness.process, **report}
                    self._send(200, "application/json", json.dumps(body).encode(), with_body)
                else:
                    body = {
                        "type": "https://omni.dev/problems/not-ready",
                        "title": "Not ready",
                        "status": 503,
                        "process": readiness.process,
                        **report,
                    }
                    self._send(503, "application/problem+json", json.dumps(body).encode(), with_body)
            elif path == "/healthz":
                self._send(200, "application/json", b'{"status": "ok"}', with_body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics, /readyz or /healthz\n", with_body)

        def _send(self, status: int, content_type: str, body: bytes, with_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            return None  # probes every second would flood the logs

    return Handler
