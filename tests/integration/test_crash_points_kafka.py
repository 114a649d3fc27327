"""Crash points (omni/failpoints.py), Kafka mode: `omni serve` (the API with its relay) and
`omni worker` run as processes; one of them is killed with SIGKILL at exactly one named point, at a
known hit, and restarted disarmed, while the client retries what got no answer. The views end
exactly equal to the events sent, and every control-plane fact is in them once.

The point is the only sender of SIGKILL, so an exit of -9 says the kill landed where the test says."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from omni import failpoints
from schemas.envelope import decode
from schemas.topics import Topics
from streams.kafka_log import KafkaLog
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH, drop_kafka_state, kafka_settings
from tests.integration.conftest import free_port
from tests.integration.worker import WorkerProcess, wait_ready, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]

BATCHES, PER_BATCH = 5, 200
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
IN_THE_WORKER = {
    failpoints.METERS_BEFORE_COMMIT,
    failpoints.METERS_AFTER_COMMIT,
    failpoints.CATALOG_BEFORE_COMMIT,
    failpoints.AUDIT_BEFORE_COMMIT,
}


class Deployment:
    """The API and a worker on the test services, either armed with the failpoint for its first run."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str, failpoint: str) -> None:
        settings = kafka_settings(os.urandom(6).hex())
        self.settings = settings
        self.schema = settings.database_schema
        self.database_url = database_url
        topics = Topics(prefix=settings.topic_prefix, usage_partitions=settings.usage_partitions)
        self.topics, self.kafka_servers = topics, settings.kafka_bootstrap_servers
        env = worker_env(topics, settings.kafka_bootstrap_servers, database_url, self.schema, tmp_path / "data")
        env |= {"REDIS_URL": redis_url, "OMNI_ADMIN_KEY": ADMIN, "OMNI_METER_API_CALLS": "false"}
        # A claim left by a kill between claim and append lapses after 5 s here, not 30 (the retries wait for it).
        env |= {"OMNI_PRODUCE_TIMEOUT_SECONDS": "4", "OMNI_DEDUPE_CLAIM_SECONDS": "1"}
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


@pytest.fixture
async def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, redis_url: str
) -> AsyncIterator[Deployment]:
    running = Deployment(tmp_path, database_url, redis_url, request.param)
    try:
        yield running
    finally:
        running.stop()
        # Its schema and topics: a topic left behind is in every later metadata answer of the suite.
        await drop_kafka_state(running.settings)


@pytest.mark.parametrize(
    "deployment",
    [
        f"{failpoints.METERS_BEFORE_COMMIT}=kill@3",
        f"{failpoints.METERS_AFTER_COMMIT}=kill@3",
        f"{failpoints.CATALOG_BEFORE_COMMIT}=kill@2",
        f"{failpoints.RELAY_BEFORE_PUBLISH}=kill@3",  # past the tenant's create (a create has no idempotency key: retried, it makes a second tenant)
        f"{failpoints.RELAY_AFTER_PUBLISH}=kill@2",
        f"{failpoints.AUDIT_BEFORE_COMMIT}=kill@2",  # past the start-up's own entry (last month closed), at a command's
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
    # The audit chains: each command's entry linked once, in order, whatever the kill interrupted.
    linked(deployment, {"meter.define"})
    linked(deployment, {"tenant.create"}, tenant=tenants[0]["id"])


def linked(deployment: Deployment, actions: set[str], tenant: str | None = None) -> None:
    """Wait until a chain holds the `actions` (the admin's `_platform` chain, or a tenant's), then
    check it is whole: seq 1, 2, ... and each audit event once."""
    params = {} if tenant is None else {"tenant": tenant}
    deadline = time.monotonic() + 60
    while True:
        entries = deployment.call(
            lambda: httpx.get(deployment.url + "/v1/audit", params={**params, "limit": 500}, headers=ADMIN_HEADERS)
        ).json()["data"]
        if actions <= {e["action"] for e in entries}:
            break
        assert time.monotonic() < deadline, f"the chain never held {actions}: {entries}\n{deployment.report()}"
        time.sleep(0.1)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert len({e["id"] for e in entries}) == len(entries), "an audit event linked twice"
    assert [e["prev"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]


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


def folded(deployment: Deployment, key: dict[str, str], count: int, timeout: float = 90, slug: str = "inferences") -> None:
    """Wait until the count meter `slug` holds `count` events (never more), restarting a killed process."""
    deadline = time.monotonic() + timeout
    while True:
        deployment.restart_if_killed()
        seen = meter_value(deployment, key, slug, defined=False)
        assert seen <= count, f"{seen} events counted, {count} sent\n{deployment.report()}"
        if seen == count:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {count} events in the views ({seen})\n{deployment.report()}"
        time.sleep(0.05)


LIMIT = 4  # a hard daily limit on a count meter, consumed LIMIT + 2 times, one consume at a time
CALLS = {"slug": "calls", "event_type": "request", "aggregation": "COUNT"}
METERED = {"entitlements": [{"meter": "calls", "limit": LIMIT, "period": "DAY", "thresholds": [50, 100]}]}
KILLED = "req-2"  # the third consume, where the quota points kill


@pytest.mark.parametrize(
    "deployment",
    [
        # Decided and counted in Redis, its answer pending, not on the log: the key answers 409 (in
        # progress) until the pending answer lapses; the counter stays above the log (the limit
        # refuses early, never late) until the next rebuild.
        f"{failpoints.QUOTA_BEFORE_APPEND}=kill@3",
        # On the log, its answer pending: 409 to the retry; the consume counts once, in both.
        f"{failpoints.QUOTA_AFTER_APPEND}=kill@3",
    ],
    indirect=True,
)
async def test_a_kill_at_each_quota_crash_point_keeps_consume_exact_and_notifies_once(deployment: Deployment) -> None:
    point = deployment.api.env[failpoints.ENVIRONMENT].partition("=")[0]
    deployment.start()
    await wait_ready([deployment.api, deployment.worker], 90, "the API and the worker")
    tenant = deployment.call(lambda: created_tenant(deployment.url))
    key = {"Authorization": f"Bearer {tenant['api_key']}"}
    defined = deployment.call(lambda: httpx.post(deployment.url + "/v1/meters", json=CALLS, headers=ADMIN_HEADERS, timeout=30))
    assert defined.status_code in (201, 409), defined.text
    plan = deployment.call(
        lambda: httpx.put(deployment.url + "/v1/plans/metered", json=METERED, headers=ADMIN_HEADERS, timeout=30)
    )
    assert plan.status_code in (200, 201), plan.text
    on_plan = f"{deployment.url}/v1/tenants/{tenant['id']}/plan"
    assigned = deployment.call(lambda: httpx.put(on_plan, json={"plan": "metered"}, headers=ADMIN_HEADERS, timeout=30))
    assert assigned.status_code == 204, assigned.text
    answers = {}
    for i in range(LIMIT + 2):
        answer = retried(deployment, lambda i=i: consumed(deployment, key, f"req-{i}"))  # type: ignore[misc]
        answers[f"req-{i}"] = (answer.status_code, answer.json())
    statuses = [status for status, _ in answers.values()]
    assert statuses == [200, 200, 409, 200, 429, 429]  # the killed consume's retry: in progress
    assert answers[KILLED][1]["type"].endswith("consume-in-progress")
    landed = point == failpoints.QUOTA_AFTER_APPEND
    accepted = ["req-0", "req-1", *([KILLED] if landed else []), "req-3"]
    thresholds = [50, 100] if landed else [50]  # the views hold 3 of 4 when the append never was
    used = [body["used"] for status, body in answers.values() if status != 409]
    assert used == [1, 2, 4, 4, 4]  # req-3 finds the killed consume counted, whether or not it landed
    notes = notified(deployment, key, len(thresholds))
    await published(deployment, len(thresholds))
    assert deployment.kills == ["api"], deployment.report()

    for idempotency_key, answer in answers.items():  # after the restart, each key answers as it did
        if answer[0] != 409:  # (the killed one's pending answer lapses after PENDING_MS: it decides anew then)
            again = consumed(deployment, key, idempotency_key)
            assert (again.status_code, again.json()) == answer
    folded(deployment, key, len(accepted), slug="calls")
    quota = deployment.call(lambda: httpx.get(deployment.url + "/v1/quotas/calls", headers=key)).json()
    assert quota["used"] == LIMIT  # the counter: never past the limit (above the log if the append never was)
    assert sorted(n["threshold"] for n in notes) == thresholds
    time.sleep(0.5)  # nothing is recorded or published twice later
    consumes, refusals, notices = await on_the_log(deployment)
    assert consumes == accepted  # each accepted consume once on the log
    assert refusals == ["req-4", "req-5"]
    assert notices == sorted(n["id"] for n in notes)  # each threshold once on the notifications topic
    assert notified(deployment, key, len(thresholds)) == notes


@pytest.mark.parametrize("deployment", [f"{failpoints.NOTICES_AFTER_RECORD}=kill@1"], indirect=True)
async def test_a_kill_after_notices_are_recorded_publishes_each_once(deployment: Deployment) -> None:
    """notices.after_record in the API's notices relay: a quota assigned over usage already folded
    (the catalog's sweep finds both thresholds reached), both notices stored in the event store, the
    API killed before their view rows are marked recorded. After the restart they are recorded again
    (refused as duplicates) and each is listed and published once."""
    deployment.start()
    await wait_ready([deployment.api, deployment.worker], 90, "the API and the worker")
    tenant = deployment.call(lambda: created_tenant(deployment.url))
    key = {"Authorization": f"Bearer {tenant['api_key']}"}
    defined = deployment.call(lambda: httpx.post(deployment.url + "/v1/meters", json=CALLS, headers=ADMIN_HEADERS, timeout=30))
    assert defined.status_code == 201, defined.text
    plan = deployment.call(
        lambda: httpx.put(deployment.url + "/v1/plans/metered", json=METERED, headers=ADMIN_HEADERS, timeout=30)
    )
    assert plan.status_code == 201, plan.text
    body = orjson.dumps([cloud_event(f"c{i}", type_="request") for i in range(LIMIT + 2)])
    sent = retried(
        deployment,
        lambda: httpx.post(deployment.url + "/v1/events", content=body, headers={**key, "Content-Type": BATCH}, timeout=60),
    )
    assert sent.status_code == 202, sent.text
    folded(deployment, key, LIMIT + 2, slug="calls")
    on_plan = f"{deployment.url}/v1/tenants/{tenant['id']}/plan"
    assigned = deployment.call(lambda: httpx.put(on_plan, json={"plan": "metered"}, headers=ADMIN_HEADERS, timeout=30))
    assert assigned.status_code == 204, assigned.text
    notes = notified(deployment, key, 2)
    await published(deployment, 2)  # recorded as notices, then published: past the point, so killed there before
    assert deployment.kills == ["api"], deployment.report()
    assert sorted(n["threshold"] for n in notes) == [50, 100]
    time.sleep(0.5)  # nothing is recorded or published twice later
    assert (await on_the_log(deployment))[2] == sorted(n["id"] for n in notes)
    assert notified(deployment, key, 2) == notes


def consumed(deployment: Deployment, key: dict[str, str], idempotency_key: str) -> httpx.Response:
    body = {"amount": 1, "idempotency_key": idempotency_key}
    return httpx.post(deployment.url + "/v1/quotas/calls/consume", json=body, headers=key, timeout=30)


def notified(deployment: Deployment, key: dict[str, str], count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Wait until the tenant's notifications list `count` notices (never more), restarting a killed process."""
    deadline = time.monotonic() + timeout
    while True:
        notes: list[dict[str, Any]] = deployment.call(
            lambda: httpx.get(deployment.url + "/v1/notifications", headers=key, timeout=30)
        ).json()["data"]
        assert len(notes) <= count, notes
        if len(notes) == count:
            return notes
        assert time.monotonic() < deadline, f"timed out waiting for {count} notifications ({notes})\n{deployment.report()}"
        time.sleep(0.05)


async def published(deployment: Deployment, count: int, timeout: float = 60) -> None:
    """Wait until the notifications topic holds `count` notices (never more), restarting a killed process."""
    deadline = time.monotonic() + timeout
    while True:
        deployment.restart_if_killed()
        notices = (await on_the_log(deployment))[2]
        assert len(notices) <= count, notices
        if len(notices) == count:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {count} notices published\n{deployment.report()}"
        time.sleep(0.2)


async def on_the_log(deployment: Deployment) -> tuple[list[str], list[str], list[str]]:
    """From Kafka: the idempotency keys of the accepted consumes and of the refusals on the usage
    topic, and the ids of the notices on the notifications topic, sorted."""
    topics = deployment.topics
    log = KafkaLog(deployment.kafka_servers, topics)
    await log.start()
    try:
        events = {}
        for topic in (topics.usage, topics.notifications):
            ends = await log.end_offsets(topic)
            events[topic] = [
                decode(record.value)
                for partition, end in ends.items()
                for record in (await log.read(topic, partition, 0, end) if end else [])
            ]
    finally:
        await log.close()
    quota_events = [e for e in events[topics.usage] if e.source in ("omni://quotas", "omni://quotas/refusals")]
    return (
        sorted(e.source_id for e in quota_events if e.type == "request"),
        sorted(e.source_id for e in quota_events if e.type == "omni.quota.refused"),
        sorted(e.data["id"] for e in events[topics.notifications]),
    )
