"""Every long-running process starts while Kafka (or PostgreSQL) is away, says it is not ready,
and becomes ready once it is back, without a restart: `omni worker` and `omni relay` as
processes, the API in-process. The missing service is one of the test's own (OwnBroker,
OwnPostgres), so stopping it disturbs no other test."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from api.app import create_app
from omni.bootstrap import build
from schemas.topics import Topics
from stores.database import PostgresDatabase
from streams.kafka_log import KafkaLog
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH, kafka_settings
from tests.integration.conftest import OwnBroker, drop_schema, free_port
from tests.integration.test_faust_worker import CALLS, OwnPostgres, Stream, meter_defined, progress, to_records
from tests.integration.worker import RELAY, WorkerProcess, wait_ready, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]

EVENTS = 150


async def test_worker_relay_and_api_start_without_kafka_and_become_ready_when_it_comes(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    broker = OwnBroker(tmp_path / "run")  # not started: nothing listens on its port yet
    settings = kafka_settings(os.urandom(6).hex(), produce_timeout_seconds=2, kafka_bootstrap_servers=broker.servers)
    topics = Topics(prefix=settings.topic_prefix, usage_partitions=settings.usage_partitions)
    env = worker_env(topics, broker.servers, database_url, settings.database_schema, tmp_path / "data")
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = WorkerProcess({**env, "OMNI_WORKER_METRICS_PORT": str(free_port())}, logs)
    relay_env = {**env, "OMNI_RELAY_METRICS_PORT": str(free_port()), "OMNI_ADMIN_KEY": ADMIN, "REDIS_URL": redis_url}
    relay = WorkerProcess(relay_env, logs, args=RELAY, name="relay", port_setting="OMNI_RELAY_METRICS_PORT")
    processes = [worker, relay]
    try:
        worker.start()
        relay.start()
        platform = build(settings)
        app = create_app(platform=platform, background=False)  # `omni relay` publishes, not the API
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://omni.test", timeout=30) as client,
        ):

            async def api_readiness() -> tuple[int, dict[str, Any]]:
                response = await client.get("/readyz")
                return response.status_code, response.json()

            def report(api: tuple[int, dict[str, Any]]) -> str:
                return f"--- the API's /readyz: {api}\n" + "\n".join(p.report() for p in processes)

            # All three up, not ready, and saying that the log is why.
            deadline = time.monotonic() + 60
            while True:
                seen = [await asyncio.to_thread(p.readiness) for p in processes] + [api := await api_readiness()]
                if all(status == 503 and body["checks"]["log"] != "ok" for status, body in seen):
                    break
                if any(p.exited is not None for p in processes) or time.monotonic() > deadline:
                    pytest.fail(f"expected all three up and not ready for want of Kafka; saw {seen}\n{report(api)}")
                await asyncio.sleep(0.2)
            for process in processes:
                assert process.exited is None, report(api)
            before_kafka = {p.name: len(p.log_text().splitlines()) for p in processes}

            await asyncio.to_thread(broker.run, "start")

            await wait_ready(processes, 90, "the worker and the relay to be ready once Kafka answers")
            deadline = time.monotonic() + 30
            while (api := await api_readiness())[0] != 200:
                assert time.monotonic() < deadline, f"the API is not ready once Kafka answers\n{report(api)}"
                await asyncio.sleep(0.2)
            assert worker.runs == relay.runs == 1  # no restart
            # While Kafka was away each process logged a line or so per attempt, not thousands.
            assert max(before_kafka.values()) < 100, f"log lines while Kafka was away: {before_kafka}\n{report(api)}"

            # And they work: the relay publishes the meter, the worker folds the events exactly.
            await serves_exact_counts(client, lambda: report(api))
            assert worker.stop() == 0, report(api)
            assert relay.stop() == 0, report(api)
    finally:
        try:
            for process in processes:
                process.ensure_dead()
            drop_schema(database_url, settings.database_schema)  # the topics go with the broker's own data
        finally:
            broker.run("stop")


# `python -m streams.faust_app`, except that the topic check before Faust starts "succeeds" without
# asking Kafka: as if Kafka had answered it and gone away before Faust's producer and consumer started.
SKIPPING_THE_TOPIC_CHECK = """
import streams.faust_app as worker
from omni import logs
from omni.settings import Settings

checked = worker.retry_forever

async def retry_forever(what, work):
    if what.startswith("creating the topics"):
        return None
    return await checked(what, work)

worker.retry_forever = retry_forever
settings = Settings()
logs.configure(settings.log_level)
worker.run_worker(settings)
"""


async def test_kafka_gone_between_the_workers_topic_check_and_fausts_start(tmp_path: Path, database_url: str) -> None:
    """Faust's producer and consumer crashed the worker when they could not bootstrap (exit 1, for good)."""
    broker = OwnBroker(tmp_path / "run")
    broker.run("start")
    schema = f"it_{os.urandom(6).hex()}"
    topics = Topics(prefix=f"it-{os.urandom(5).hex()}", usage_partitions=3)
    log = KafkaLog(broker.servers, topics, produce_timeout=5.0)
    worker: WorkerProcess | None = None
    try:
        await log.ping()  # creates the topics, which the broker keeps while it is stopped
        await log.close()
        await asyncio.to_thread(broker.run, "stop")
        env = worker_env(topics, broker.servers, database_url, schema, tmp_path / "data")
        (tmp_path / "logs").mkdir()
        worker = WorkerProcess(
            {**env, "OMNI_WORKER_METRICS_PORT": str(free_port())}, tmp_path / "logs", args=("-c", SKIPPING_THE_TOPIC_CHECK)
        )
        worker.start()
        deadline = time.monotonic() + 60
        while "cannot reach Kafka" not in worker.log_text():
            assert worker.exited is None, f"the worker gave up without Kafka:\n{worker.report()}"
            assert time.monotonic() < deadline, f"the worker should be retrying Faust's start:\n{worker.report()}"
            await asyncio.sleep(0.2)
        status, body = await asyncio.to_thread(worker.readiness)
        assert status == 503 and body["checks"]["log"] != "ok", worker.report()

        await asyncio.to_thread(broker.run, "start")
        await wait_ready([worker], 90, "the worker to be ready once Kafka answers")
        assert worker.runs == 1

        # It folds: a meter and its events, counted exactly.
        log = KafkaLog(broker.servers, topics, produce_timeout=5.0)
        stream = Stream()
        await log.append(topics.control, [meter_defined(CALLS)])
        await log.append(topics.usage, to_records(stream.generate(60)))
        ends = {p: end for p, end in (await log.end_offsets(topics.usage)).items() if end}
        views_db = PostgresDatabase(database_url, schema=schema)
        try:
            deadline = time.monotonic() + 60
            while (folded := (await asyncio.to_thread(progress, views_db, topics)).meters) != ends:
                assert time.monotonic() < deadline, f"views at {folded}, log ends {ends}\n{worker.report()}"
                await asyncio.sleep(0.2)
        finally:
            views_db.close()
        assert worker.stop() == 0
    finally:
        await log.close()
        if worker is not None:
            worker.ensure_dead()
        drop_schema(database_url, schema)
        broker.run("stop")


async def test_worker_relay_and_api_start_without_postgresql_and_become_ready_when_it_comes(
    tmp_path: Path, kafka_log: KafkaLog, topics: Topics, redis_url: str
) -> None:
    postgres = OwnPostgres(tmp_path / "run")  # not started: nothing listens on its port yet
    env = worker_env(topics, kafka_log.bootstrap_servers, postgres.url, "public", tmp_path / "data")
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = WorkerProcess({**env, "OMNI_WORKER_METRICS_PORT": str(free_port())}, logs)
    relay_env = {**env, "OMNI_RELAY_METRICS_PORT": str(free_port()), "OMNI_ADMIN_KEY": ADMIN, "REDIS_URL": redis_url}
    relay = WorkerProcess(relay_env, logs, args=RELAY, name="relay", port_setting="OMNI_RELAY_METRICS_PORT")
    # `omni serve` waits to build until PostgreSQL answers, and listens only then.
    api = omni_serve(relay_env, logs)
    processes = [worker, relay, api]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + 60
        while True:
            seen = [await asyncio.to_thread(p.readiness) for p in processes]
            waiting = all(status == 503 and body["checks"]["views"] != "ok" for status, body in seen[:2])
            if waiting and seen[2][0] == 0 and "cannot reach PostgreSQL" in api.log_text():
                break
            if any(p.exited is not None for p in processes) or time.monotonic() > deadline:
                pytest.fail(
                    f"expected both up and not ready for want of PostgreSQL; saw {seen}\n"
                    + "\n".join(p.report() for p in processes)
                )
            await asyncio.sleep(0.2)

        await asyncio.to_thread(postgres.run, "start")

        await wait_ready(processes, 90, "the worker, the relay and the API to be ready once PostgreSQL answers")
        assert worker.runs == relay.runs == api.runs == 1  # no restart
        assert worker.stop() == 0
        assert relay.stop() == 0
        assert api.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it shut down for
    finally:
        try:
            for process in processes:
                process.ensure_dead()
        finally:
            postgres.run("stop")  # its data goes with the test's temporary folder


async def test_omni_serve_started_without_kafka_becomes_ready_and_serves_when_it_comes(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    """The API as deployed: `omni serve` in Kafka mode, its background tasks (the relay, the notices'
    relay, GDPR jobs, retention) running, and no Kafka at start. It answers /readyz 503 for want of
    the log, keeps running, and once the broker starts becomes ready and publishes what it accepts,
    without a restart. (The test above runs the API in-process without its background tasks.)"""
    broker = OwnBroker(tmp_path / "run")  # not started
    settings = kafka_settings(os.urandom(6).hex(), kafka_bootstrap_servers=broker.servers)
    topics = Topics(prefix=settings.topic_prefix, usage_partitions=settings.usage_partitions)
    env = worker_env(topics, broker.servers, database_url, settings.database_schema, tmp_path / "data")
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = WorkerProcess({**env, "OMNI_WORKER_METRICS_PORT": str(free_port())}, logs)
    api = omni_serve({**env, "OMNI_ADMIN_KEY": ADMIN, "REDIS_URL": redis_url}, logs)
    processes = [worker, api]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + 60
        while True:
            seen = [await asyncio.to_thread(p.readiness) for p in processes]
            if all(status == 503 and body["checks"]["log"] != "ok" for status, body in seen):
                break
            if any(p.exited is not None for p in processes) or time.monotonic() > deadline:
                pytest.fail(
                    f"expected both up and not ready for want of Kafka; saw {seen}\n" + "\n".join(p.report() for p in processes)
                )
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # the background tasks meet the missing broker
        assert api.exited is None, api.report()
        before_kafka = {p.name: len(p.log_text().splitlines()) for p in processes}

        await asyncio.to_thread(broker.run, "start")
        await wait_ready(processes, 90, "the worker and `omni serve` to be ready once Kafka answers")
        assert worker.runs == api.runs == 1  # no restart
        # A line or so per attempt while Kafka was away, not thousands (nor a traceback per task).
        assert max(before_kafka.values()) < 100, f"log lines while Kafka was away: {before_kafka}\n{api.report(100)}"

        async with httpx.AsyncClient(base_url=api.url(""), timeout=30) as client:
            await serves_exact_counts(client, lambda: "\n".join(p.report() for p in processes))
        assert worker.stop() == 0, worker.report()
        assert api.stop() in (0, -signal.SIGTERM), api.report()  # uvicorn re-raises the signal it shut down for
    finally:
        try:
            for process in processes:
                process.ensure_dead()
            drop_schema(database_url, settings.database_schema)
        finally:
            broker.run("stop")


async def serves_exact_counts(client: httpx.AsyncClient, report: Callable[[], str]) -> None:
    """A meter defined and EVENTS events sent through `client`: the meter's query counts them all,
    once (the relay published the meter, the worker folded the events)."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tenant = (await client.post("/v1/tenants", json={"name": "late", "plan": "p"}, headers=admin)).json()
    meter = {"slug": "calls", "event_type": "call", "aggregation": "COUNT"}
    assert (await client.post("/v1/meters", json=meter, headers=admin)).status_code == 201
    key = {"Authorization": f"Bearer {tenant['api_key']}", "Content-Type": BATCH}
    for batch in range(EVENTS // 50):
        body = orjson.dumps([cloud_event(f"b{batch}-{i}", type_="call") for i in range(50)])
        response = await client.post("/v1/events", content=body, headers=key)
        assert response.status_code == 202, response.text

    async def counted() -> tuple[int, object]:
        query = await client.get("/v1/meters/calls/query", headers={"Authorization": key["Authorization"]})
        body = query.json()
        return query.status_code, [row["value"] for row in body["data"]] if query.status_code == 200 else body

    expected = (200, [EVENTS])
    deadline = time.monotonic() + 60
    while (seen_count := await counted()) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert seen_count == expected, f"the meter: expected {expected}, the API answered {seen_count}\n{report()}"


def omni_serve(env: dict[str, str], logs: Path) -> WorkerProcess:
    """`omni serve` as a process, on a port of its own (its /readyz there too)."""
    port = str(free_port())
    return WorkerProcess(
        {**env, "OMNI_TEST_API_PORT": port},
        logs,
        args=("-m", "omni.cli", "serve", "--port", port),
        name="api",
        port_setting="OMNI_TEST_API_PORT",
    )
