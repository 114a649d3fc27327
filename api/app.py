"""The FastAPI application: routers, problem handlers, self-metering, lifecycle."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import deps, docs, edge, head_requests, idempotency, lean_consume, metering, openapi, problems, tracing
from api.host_lookups import HostLookups
from api.ingest_rates import IngestRates
from api.meter_watch import MeterWatches
from api.routes import (
    audit,
    events,
    gdpr,
    health,
    invoices,
    meters,
    plans,
    quotas,
    replays,
    slos,
    tenants,
    webhook_endpoints,
    webhooks,
)
from omni.bootstrap import Platform, build
from omni.settings import Settings


def create_app(settings: Settings | None = None, *, platform: Platform | None = None, background: bool = True) -> FastAPI:
    """`background` runs the relay (and, embedded, the runner) inside the API process."""
    platform = platform or build(settings or Settings())
    recorder = metering.ApiCallRecorder(platform.log)
    watches = MeterWatches(platform)
    host_lookups = HostLookups()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.start(background=background)
        if platform.settings.meter_api_calls:
            recorder.start()
        try:
            yield
        finally:
            watches.close()  # a server other than omni serve's (api/server.py) ends them only here
            host_lookups.close()
            await recorder.stop()
            await recorder.flush()
            await platform.stop()

    app = FastAPI(
        title="Omni",
        version="0.1.0",
        summary="Metering, quotas, billing, SLOs and compliance on an event log",
        lifespan=lifespan,
        telemetry=tracing.TELEMETRY,
        # Starlette's redirect to the other spelling builds its Location from the Host header, which
        # the caller chooses: a path with a trailing slash is simply not found.
        redirect_slashes=False,
        # Operation ids are the routes' function names (`create_tenant`, `ingest_events`): what client
        # generators name their methods after.
        generate_unique_id_function=lambda route: route.name,
        # Served by api/docs.py instead: offline, and as routes that metrics can name.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # A NUL in the URL names nothing (404 in the path, 422 in the query), and a body FastAPI parses
        # must be JSON (415 otherwise), a query holds the route's own parameters, a one-value one once
        # (422 otherwise): for every route in one place.
        dependencies=[Depends(deps.no_nul_in_url), Depends(deps.query_as_declared), Depends(deps.json_body_media_type)],
    )
    app.state.platform = platform
    app.state.api_calls = recorder
    app.state.watches = watches
    app.state.tenant_reads = watches.reads
    app.state.host_lookups = host_lookups
    app.state.ingest_rates = IngestRates(
        platform.settings.tenant_events_per_second, batch=platform.settings.max_batch_events, clock=time.monotonic
    )
    app.state.declared_queries = deps.DeclaredQueries()
    problems.install(app)
    head_requests.install(app)  # innermost: the routes answer HEAD as GET; every other layer sees HEAD
    lean_consume.install(app)  # consume's common case, past FastAPI's routing (after the edge's checks)
    idempotency.install(app, platform)  # POSTs sent again with their Idempotency-Key: after the edge authenticated
    edge.install(app, platform)  # innermost but for lean_consume: it runs after tracing and metering saw the request
    metering.install(app, recorder if platform.settings.meter_api_calls else None)
    tracing.install(app)  # installed last, so it runs first: every later layer sees the span
    for router in (
        health.router,
        tenants.router,
        events.router,
        meters.router,
        plans.router,
        quotas.router,
        invoices.router,
        audit.router,
        slos.router,
        replays.router,
        gdpr.router,
        webhook_endpoints.router,
    ):
        app.include_router(router)
    app.include_router(webhooks.router)  # authenticated by Stripe's signature, not an API key (api/edge.py)
    openapi.install(app, platform.settings)
    docs.install(app)
    return app
