"""Fixtures for tests against the real services: Kafka, PostgreSQL, Redis.

URLs come from the environment (as `ops/services/env.sh` prints them), with the
ports of `ops/services/up.sh` as defaults. A service that does not answer skips
its tests with a clear message, unless OMNI_REQUIRE_SERVICES is set (CI): then
it fails them, so a missing service can never pass for green.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient

from schemas.topics import Topics
from stores.database import PostgresDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA
from streams.kafka_log import KafkaLog
from tests.integration.worker import ROOT, WorkerProcess, worker_env

KAFKA_BOOTSTRAP_SERVERS = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:19092")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://omni:omni@127.0.0.1:15432/omni")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:16379/0")
START_HINT = "start it with `bash ops/services/up.sh`"


def unreachable(service: str, where: str, why: object) -> None:
    message = f"{service} is unreachable at {where} ({why}); {START_HINT}"
    if os.environ.get("OMNI_REQUIRE_SERVICES"):
        pytest.fail(f"OMNI_REQUIRE_SERVICES is set but {message}", pytrace=False)
    pytest.skip(message)


def _tcp_answers(host: str, port: int) -> OSError | None:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as failure:
        return failure
    return None


@pytest.fixture(scope="session")
def kafka_servers() -> str:
    for server in KAFKA_BOOTSTRAP_SERVERS.split(","):
        host, _, port = server.strip().rpartition(":")
        failure = _tcp_answers(host or "localhost", int(port))
        if failure is None:
            return KAFKA_BOOTSTRAP_SERVERS
    unreachable("Kafka", KAFKA_BOOTSTRAP_SERVERS, failure)
    raise AssertionError("unreachable")  # for type checkers: unreachable() never returns


@pytest.fixture(scope="session")
def database_url() -> str:
    try:
        psycopg.connect(DATABASE_URL, connect_timeout=3).close()
    except psycopg.OperationalError as failure:
        unreachable("PostgreSQL", DATABASE_URL, failure)
    return DATABASE_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as failure:
        unreachable("Redis", REDIS_URL, failure)
    return REDIS_URL


@pytest.fixture
def prefix() -> str:
    """Topic prefix (and so Faust app id and consumer group) of one test."""
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topics(prefix: str) -> Topics:
    return Topics(prefix=prefix, usage_partitions=3)


@pytest.fixture
async def kafka_log(kafka_servers: str, topics: Topics) -> AsyncIterator[KafkaLog]:
    """A started KafkaLog on the test's own topics, which are deleted afterwards."""
    log = KafkaLog(kafka_servers, topics, produce_timeout=10.0)
    await log.start()
    await log.ping()  # creates the topics now, and fails the test early if Kafka cannot
    yield log
    await log.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers)
    try:
        await admin.start()
        await admin.delete_topics(list(topics.all()))
    finally:
        await admin.close()


def new_schema_name() -> str:
    return f"it_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_schemas(database_url: str) -> Iterator[list[str]]:
    """Collects schemas a test creates (`new_schema_name`), and drops them afterwards."""
    created: list[str] = []
    yield created
    with psycopg.connect(database_url, autocommit=True) as conn:
        for schema in created:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def views_db(database_url: str, pg_schemas: list[str]) -> Iterator[PostgresDatabase]:
    """A migrated views database in a schema of its own."""
    schema = new_schema_name()
    pg_schemas.append(schema)
    db = PostgresDatabase(database_url, schema=schema)
    db.migrate(VIEW_SCHEMA)
    yield db
    db.close()


def free_port() -> int:
    """A local port where nothing listens (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def reserved_port() -> int:
    """A free port below the ephemeral range (Linux: 32768 and up), for a listener that starts later.

    A port from `free_port` is one the kernel also hands out for outgoing connections and to other
    tests' `free_port`: while the broker waits to start (the tests that start Omni without it), one of
    those could take it, and Kafka would fail to bind."""
    while True:
        port = random.randrange(20_000, 32_000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class OwnBroker:
    """A second single-node Kafka (ops/services/kafka.sh on free ports, its data under `run_dir`),
    so stopping it disturbs no other test. Not started until `run("start")`."""

    def __init__(self, run_dir: Path) -> None:
        self.port, self.controller = reserved_port(), reserved_port()
        self.servers = f"localhost:{self.port}"
        self.env = {
            **os.environ,
            "OMNI_RUN_DIR": str(run_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller),
            # It lives for one test, stopped and started again: the quick compiler alone and the serial
            # collector start it on about 60 % of the CPU (the suite is bound by CPU).
            "KAFKA_EXTRA_JVM_OPTS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        }

    def run(self, action: str) -> None:
        subprocess.run(["bash", "ops/services/kafka.sh", action], cwd=ROOT, env=self.env, check=True, timeout=120)


def drop_schema(database_url: str, schema: str) -> None:
    """Drop a test's PostgreSQL schema (its event store and views)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def worker_factory(tmp_path: Path, topics: Topics, kafka_servers: str) -> Iterator[Callable[[str, str], WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def make(database_url: str, schema: str) -> WorkerProcess:
        logs = tmp_path / f"logs-{len(workers)}"
        logs.mkdir()
        env = worker_env(topics, kafka_servers, database_url, schema, tmp_path / "data")
        worker = WorkerProcess({**env, "OMNI_WORKER_METRICS_PORT": str(free_port())}, logs, name=f"worker{len(workers)}")
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.ensure_dead()
