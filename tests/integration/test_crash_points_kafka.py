"""Crash points (omni/failpoints.py), Kafka mode: `omni serve` (the API with its relay) and
`omni worker` run as processes; one of them is killed with SIGKILL at exactly one named point, at a
known hit, and restarted disarmed, while the client retries what got no answer. The views end
exactly equal to the events sent, and every control-plane fact is in them once.

The point is the only sender of SIGKILL, so an exit of -9 says the kill landed where the test says."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from omni import failpoints
from schemas.topics import Topics
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH, kafka_settings
from tests.integration.conftest import drop_schema, free_port
from tests.integration.worker import WorkerProcess, wait_ready, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]

BATCHES, PER_BATCH = 5, 200
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
IN_THE_WORKER = {failpoints.METERS_BEFORE_COMMIT, failpoints.METERS_AFTER_COMMIT, failpoints.CATALOG_BEFORE_COMMIT}


class Deployment:
    """The API and a worker on the test services, either armed with the failpoint for its first run."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str, failpoint: str) -> None:
        settings = kafka_settings(os.urandom(6).hex())
        self.schema = settings.database_schema
        self.database_url = database_url
        topics = Topics(prefix=settings.topic_prefix, usage_partitions=settings.usage_partitions)
        env = worker_env(topics, settings.kafka_bootstrap_servers, database_url, self.schema, tmp_path / "data")
        env |= {"REDIS_URL": redis_url, "OMNI_ADMIN_KEY": ADMIN, "OMNI_METER_API_CALLS": "false"}
        logs = tmp_path / "logs"
        logs.mkdir()
        point = failpoint.partition("=")[0]
        api_port = str(free_port())
        self.api = WorkerProcess(
            {**env, "OMNI_TEST_API_PORT": api_port, failpoints.ENVIRONMENT: "" if point in IN_THE_WORKER else failpoint},
            logs,
            args=("-m", "omni.cli", "serve", "--port", api_port),
            name="api",
            port_setting="OMNI_TEST_API_PORT",
        )
        self.worker = WorkerProcess(
            {
                **env,
                "OMNI_WORKER_METRICS_PORT": str(free_port()),
                failpoints.ENVIRONMENT: failpoint if point in IN_THE_WORKER else "",
            },
            logs,
        )
        self.url = f"http://127.0.0.1:{api_port}"
        self.kills: list[str] = []

    def start(self) -> None:
        self.api.start()
        self.worker.start()

    def restart_if_killed(self) -> None:
        """A process the failpoint killed starts again, disarmed; any other exit fails the test."""
        for process in (self.api, self.worker):
            code = process.exited
            if code is None:
                continue
            assert code == -signal.SIGKILL, f"{process.name} exited with {code}, not at the failpoint:\n{process.report()}"
            self.kills.append(process.name)
            process.env[failpoints.ENVIRONMENT] = ""
            process.start()

    def call(self, request: Callable[[], httpx.Response]) -> httpx.Response:
        deadline = time.monotonic() + 60
        while True:
            try:
                return request()
            except httpx.TransportError:  # the API is down: killed, or still starting again
                self.restart_if_killed()
                assert time.monotonic() < deadline, f"the API did not answer again:\n{self.report()}"
                time.sleep(0.1)

    def report(self) -> str:
        return "\n".join(p.report() for p in (self.api, self.worker))

    def stop(self) -> None:
        for process in (self.api, self.worker):
            process.ensure_dead()
        drop_schema(self.database_url, self.schema)


@pytest.fixture
def deployment(request: pytest.FixtureRequest, tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Deployment]:
    running = Deployment(tmp_path, database_url, redis_url, request.param)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize(
    "deployment",
    [
        f"{failpoints.METERS_BEFORE_COMMIT}=kill@3",
        f"{failpoints.METERS_AFTER_COMMIT}=kill@3",
        f"{failpoints.CATALOG_BEFORE_COMMIT}=kill@2",
        f"{failpoints.RELAY_AFTER_PUBLISH}=kill@2",
        f"{failpoints.INGEST_AFTER_APPEND}=kill@2",
        f"{failpoints.DEDUPE_AFTER_APPEND}=kill@2",
    ],
    indirect=True,
)
async def test_a_kill_at_each_crash_point_loses_nothing_and_counts_nothing_twice(deployment: Deployment) -> None:
    deployment.start()
    await wait_ready([deployment.api, deployment.worker], 90, "the API and the worker")
    tenant = deployment.call(lambda: created_tenant(deployment.url))
    key = {"Authorization": f"Bearer {tenant['api_key']}"}
    for meter in (
        {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"},
        {"slug": "inferences", "event_type": "inference", "aggregation": "COUNT"},
    ):
        defined = deployment.call(
            lambda meter=meter: httpx.post(deployment.url + "/v1/meters", json=meter, headers=ADMIN_HEADERS, timeout=30)
        )  # type: ignore[misc]
        assert defined.status_code in (201, 409), defined.text  # 409: defined before a kill took its answer
    truth = Decimal(0)
    for b in range(BATCHES):
        events = [cloud_event(f"b{b}-{i}", data={"tokens": (b * PER_BATCH + i) % 7 + 1}) for i in range(PER_BATCH)]
        body = orjson.dumps(events)
        answer = retried(
            deployment,
            lambda body=body: httpx.post(  # type: ignore[misc]
                deployment.url + "/v1/events", content=body, headers={**key, "Content-Type": BATCH}, timeout=60
            ),
        )
        assert answer.status_code == 202, answer.text
        truth += sum(e["data"]["tokens"] for e in events)
        folded(deployment, key, (b + 1) * PER_BATCH)  # a fold commit per batch: the Nth hit lands in this run
    assert len(deployment.kills) == 1, f"expected one kill, saw {deployment.kills}\n{deployment.report()}"
    assert meter_value(deployment, key, "tokens") == truth
    time.sleep(0.5)  # nothing is applied twice later
    assert meter_value(deployment, key, "inferences") == BATCHES * PER_BATCH
    tenants = deployment.call(lambda: httpx.get(deployment.url + "/v1/tenants", headers=ADMIN_HEADERS)).json()["data"]
    assert [t["name"] for t in tenants] == ["acme"]


def retried(deployment: Deployment, request: Callable[[], httpx.Response], timeout: float = 90) -> httpx.Response:
    """As a client does: again after a 503, as its Retry-After says. (A claim whose API was killed
    between the append and marking it done holds its events' ids until it lapses, OMNI's claim TTL:
    retries wait for it, then see the events as the duplicates they are.)"""
    deadline = time.monotonic() + timeout
    while (answer := deployment.call(request)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(float(answer.headers.get("retry-after", "1")))
    return answer


def created_tenant(url: str) -> dict[str, Any]:
    existing = httpx.get(url + "/v1/tenants", headers=ADMIN_HEADERS).json()["data"]
    if existing:
        issued = httpx.post(url + f"/v1/tenants/{existing[0]['id']}/keys", json={}, headers=ADMIN_HEADERS, timeout=30).json()
        return {"id": existing[0]["id"], "api_key": issued["api_key"]}
    response = httpx.post(url + "/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=ADMIN_HEADERS, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def meter_value(deployment: Deployment, key: dict[str, str], slug: str, *, defined: bool = True) -> Decimal:
    response = deployment.call(lambda: httpx.get(deployment.url + f"/v1/meters/{slug}/query", headers=key))
    if response.status_code == 404 and not defined:
        return Decimal(-1)  # the views do not hold its definition yet (the worker that folds it restarts)
    assert response.status_code == 200, response.text
    data = orjson.loads(response.content)["data"]
    return Decimal(str(data[0]["value"])) if data else Decimal(0)


def folded(deployment: Deployment, key: dict[str, str], count: int, timeout: float = 90) -> None:
    """Wait until the count meter holds `count` events (never more), restarting a killed process."""
    deadline = time.monotonic() + timeout
    while True:
        deployment.restart_if_killed()
        seen = meter_value(deployment, key, "inferences", defined=False)
        assert seen <= count, f"{seen} events counted, {count} sent\n{deployment.report()}"
        if seen == count:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {count} events in the views ({seen})\n{deployment.report()}"
        time.sleep(0.05)
