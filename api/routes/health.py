"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import hmac
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from api.deps import PlatformDep
from api.problems import Problem
from api.roles import RoleFirstRoute
from omni.settings import Mode
from streams.redis_dedupe import RedisDedupedSink

router = APIRouter(tags=["health"], route_class=RoleFirstRoute)
CHECK_SECONDS = 3.0  # the longest /readyz waits for one service's answer (they are asked at once)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


# GET and HEAD answer alike (HEAD without the body), so each documents every answer.
METRICS_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition"},
    401: {"description": "OMNI_METRICS_TOKEN is set and the request does not carry it"},
    404: {"description": "OMNI_API_METRICS is off"},
}


@router.head("/metrics", operation_id="prometheus_metrics_head", response_class=Response, responses=METRICS_ANSWERS)
@router.get("/metrics", response_class=Response, responses=METRICS_ANSWERS)
def prometheus_metrics(request: Request, platform: PlatformDep) -> Response:
    """Prometheus exposition format. The counts span every tenant: open unless OMNI_METRICS_TOKEN is
    set (then `Authorization: Bearer <token>`), and absent with OMNI_API_METRICS=false."""
    settings = platform.settings
    if not settings.api_metrics:
        raise Problem(404, "Not found", "Metrics are not served on this port (OMNI_API_METRICS=false).", kind="not-found")
    if settings.metrics_token is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, settings.metrics_token.encode()):
            raise Problem(
                401,
                "Unauthorized",
                "Send the metrics token as `Authorization: Bearer <token>`.",
                kind="unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class LowOnDisk(Exception):
    """The data directory's file system has less room than OMNI_MIN_FREE_DISK_MB."""


def disk_probe(data_dir: Path, floor_mb: int) -> None:
    """Embedded mode's files answer but may have no room: SQLite then refuses every write (503s)."""
    free = shutil.disk_usage(data_dir).free
    if free < floor_mb * 2**20:
        raise LowOnDisk(f"{free / 2**20:.1f} MiB free under {data_dir}, below OMNI_MIN_FREE_DISK_MB ({floor_mb})")


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable, or the data directory nearly full"}})
async def readyz(platform: PlatformDep) -> JSONResponse:
    """The log, the event store and the views are all reachable, and Redis in Kafka mode; in
    embedded mode, the data directory's file system has room (OMNI_MIN_FREE_DISK_MB)."""
    checks: dict[str, str] = {}

    async def check(name: str, probe) -> None:  # type: ignore[no-untyped-def]
        try:
            await asyncio.wait_for(probe(), timeout=CHECK_SECONDS)
            checks[name] = "ok"
        except TimeoutError:
            checks[name] = f"unavailable: no answer within {CHECK_SECONDS:g} s"
        except Exception as failure:  # any failure means not ready; the reason is reported
            checks[name] = f"unavailable: {type(failure).__name__}: {failure}"[:300]

    def views_probe() -> None:
        with platform.db.transaction() as tx:
            tx.execute("SELECT 1")

    # All at once: one after the other, the answer took a probe's wait for each service away (over
    # 6 s with PostgreSQL away), past the timeout of most readiness probes (Kubernetes: 1 s).
    probes = [
        check("log", platform.log.ping),
        check("event_store", lambda: asyncio.to_thread(platform.control.recorder.max_notification_id)),
        check("views", lambda: asyncio.to_thread(views_probe)),
    ]
    if isinstance(platform.sink, RedisDedupedSink):  # Kafka mode: every ingest and consume claims in Redis first
        probes.append(check("redis", platform.sink.ping))
    settings = platform.settings
    if settings.mode is Mode.EMBEDDED and settings.min_free_disk_mb:
        probes.append(check("disk", lambda: asyncio.to_thread(disk_probe, settings.data_dir, settings.min_free_disk_mb)))
    await asyncio.gather(*probes)
    checks = {name: checks[name] for name in ("log", "event_store", "views", "redis", "disk") if name in checks}
    ready = all(v == "ok" for v in checks.values())
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {"type": "https://omni.dev/problems/not-ready", "title": "Not ready", "status": 503, "checks": checks},
        status_code=503,
        media_type="application/problem+json",
    )
