"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from api.deps import PlatformDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/metrics", response_class=Response)
def prometheus_metrics() -> Response:
    """Prometheus exposition format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable"}})
async def readyz(platform: PlatformDep) -> JSONResponse:
    """The log, the event store and the views are all reachable."""
    checks: dict[str, str] = {}

    async def check(name: str, probe) -> None:  # type: ignore[no-untyped-def]
        try:
            await asyncio.wait_for(probe(), timeout=3)
            checks[name] = "ok"
        except Exception as failure:  # any failure means not ready; the reason is reported
            checks[name] = f"unavailable: {type(failure).__name__}: {failure}"[:300]

    def views_probe() -> None:
        with platform.db.transaction() as tx:
            tx.execute("SELECT 1")

    await check("log", platform.log.ping)
    await check("event_store", lambda: asyncio.to_thread(platform.control.recorder.max_notification_id))
    await check("views", lambda: asyncio.to_thread(views_probe))
    ready = all(v == "ok" for v in checks.values())
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {"type": "https://omni.dev/problems/not-ready", "title": "Not ready", "status": 503, "checks": checks},
        status_code=503,
        media_type="application/problem+json",
    )
