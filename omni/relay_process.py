"""`omni relay`: the outbox relay as a process of its own (Kafka mode).

It never exits because Kafka or PostgreSQL is away. Until PostgreSQL answers it waits to build
(one warning per attempt, with backoff); Kafka is connected lazily (streams/kafka_log.py), and the
relay retries what it could not publish. Meanwhile GET /readyz on OMNI_RELAY_METRICS_PORT answers
503 with the reason, and 200 once the log, the event store and the views all answer.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import psycopg

from omni import health_server
from omni.bootstrap import Platform, build
from omni.health_server import Prober, Readiness, failure_text, in_daemon_thread
from omni.settings import Settings

logger = logging.getLogger(__name__)

LOG, EVENT_STORE, VIEWS = "log", "event_store", "views"  # as the API's /readyz names them
RETRY_FIRST, RETRY_MAX = 0.5, 5.0


def run_relay(settings: Settings) -> None:
    asyncio.run(relay_until_stopped(settings))


async def relay_until_stopped(settings: Settings) -> None:
    readiness = Readiness("relay", (LOG, EVENT_STORE, VIEWS))
    health_server.serve(
        settings.metrics_host,
        settings.relay_metrics_port,
        readiness,
        "OMNI_RELAY_METRICS_PORT",
        metrics_token=settings.metrics_token,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    platform = await build_when_reachable(settings, readiness, stop)
    if platform is None:
        return  # stopped while waiting
    await platform.start(background=False, watch_keys=False)  # it authenticates no one
    platform.start_auto_close()
    platform.start_stripe_sync()
    platform.start_webhooks()
    prober = Prober(readiness, probes(platform))
    probing = asyncio.create_task(prober.run(stop), name="readiness")
    try:
        await platform.relay.run(stop)
    finally:
        probing.cancel()
        prober.cancel()
        await platform.stop()


async def build_when_reachable(settings: Settings, readiness: Readiness, stop: asyncio.Event) -> Platform | None:
    """build(settings) once PostgreSQL answers (it migrates the views and opens the event store
    there), retrying with backoff; None if stopped meanwhile."""
    delay = RETRY_FIRST
    while not stop.is_set():
        try:
            # A plain connection first: a build that fails halfway may leave a pool behind.
            await asyncio.to_thread(_connect_once, settings.database_url)
            return await asyncio.to_thread(build, settings)
        except Exception as failure:
            reason = failure_text(failure)
            readiness.failed(EVENT_STORE, reason)
            readiness.failed(VIEWS, reason)
            logger.warning("the relay cannot reach PostgreSQL (%s); retrying in %.1fs", failure, delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass
        delay = min(delay * 2, RETRY_MAX)
    return None


def _connect_once(url: str) -> None:
    psycopg.connect(url, connect_timeout=5).close()


def probes(platform: Platform) -> dict[str, health_server.Probe]:
    def views_answer() -> None:
        with platform.db.transaction() as tx:
            tx.execute("SELECT 1")

    return {
        LOG: platform.log.ping,
        # In daemon threads: a probe stuck on a connection must not keep the relay from exiting.
        EVENT_STORE: lambda: in_daemon_thread(platform.control.recorder.max_notification_id),
        VIEWS: lambda: in_daemon_thread(views_answer),
    }
