"""Notifications, Kafka mode: each quota threshold once per period, and each SLO alert transition
once, across a worker killed with SIGKILL mid-fold (after its commit, before anything else), and
the same notifications again, no more, when the whole log is folded anew into fresh views (a
replay). The same deployment (one setup for several checks) shows that both processes' /metrics
pass `promtool check metrics`, and that one trace runs from a request through Kafka into the
worker's commit, exported by both processes with OTLP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from omni import failpoints
from tests.conftest import cloud_event
from tests.e2e.conftest import BATCH
from tests.e2e.test_slo_alerts_once import outage
from tests.integration.conftest import drop_schema, free_port
from tests.integration.test_crash_points_kafka import ADMIN_HEADERS, Deployment, created_tenant, deployment, folded, retried
from tests.integration.worker import WorkerProcess, wait_ready
from tests.otlp import Receiver, otlp
from tests.promtool import check_metrics

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]
__all__ = ["deployment", "otlp"]  # fixtures: shared with the crash-point tests; the OTLP receiver

BATCHES, PER_BATCH = 5, 200
THRESHOLDS = [25, 50, 75, 100]


def notices(database_url: str, schema: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(f'SELECT id, meter, threshold FROM "{schema}".notifications ORDER BY threshold').fetchall()
    return [(r[0], r[1], int(r[2])) for r in rows]


@pytest.mark.parametrize("deployment", [f"{failpoints.METERS_AFTER_COMMIT}=kill@3"], indirect=True)
async def test_thresholds_are_notified_once_across_a_kill_and_a_replay(
    deployment: Deployment, tmp_path: Path, otlp: Receiver
) -> None:
    for process in (deployment.api, deployment.worker):  # both export their spans to the test's receiver
        process.env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    deployment.start()
    await wait_ready([deployment.api, deployment.worker], 90, "the API and the worker")
    tenant = deployment.call(lambda: created_tenant(deployment.url))
    key = {"Authorization": f"Bearer {tenant['api_key']}"}
    meter = {"slug": "inferences", "event_type": "inference", "aggregation": "COUNT"}
    assert (
        deployment.call(
            lambda: httpx.post(deployment.url + "/v1/meters", json=meter, headers=ADMIN_HEADERS, timeout=30)
        ).status_code
        == 201
    )
    plan = {"entitlements": [{"meter": "inferences", "limit": 1000, "period": "MONTH", "thresholds": THRESHOLDS}]}
    put = deployment.call(lambda: httpx.put(deployment.url + "/v1/plans/pro", json=plan, headers=ADMIN_HEADERS, timeout=30))
    assert put.status_code == 201, put.text
    # An SLO over `call` events (no meter counts them) and an outage that fires and resolves its alerts.
    slo = {"event_type": "call", "sli": "availability", "status_property": "$.data.status", "objective": 99, "window": "30d"}
    defined = deployment.call(lambda: httpx.put(deployment.url + "/v1/slos/calls", json=slo, headers=key, timeout=30))
    assert defined.status_code == 201, defined.text
    crafted = outage(datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10), type_="call")
    sent = retried(
        deployment,
        lambda: httpx.post(deployment.url + "/v1/events", json=crafted, headers={**key, "Content-Type": BATCH}, timeout=60),
    )
    assert sent.status_code == 202, sent.text
    for b in range(BATCHES):
        events = [cloud_event(f"b{b}-{i}") for i in range(PER_BATCH)]
        answer = retried(
            deployment,
            lambda events=events: httpx.post(  # type: ignore[misc]
                deployment.url + "/v1/events",
                json=events,
                headers={**key, "Content-Type": "application/cloudevents-batch+json"},
                timeout=60,
            ),
        )
        assert answer.status_code == 202, answer.text
        folded(deployment, key, (b + 1) * PER_BATCH)
    assert deployment.kills == ["worker"], deployment.report()

    first = notices(deployment.database_url, deployment.schema)
    assert [t for _, _, t in first] == THRESHOLDS, "each threshold once, though a batch was folded twice"
    listed = deployment.call(lambda: httpx.get(deployment.url + "/v1/notifications", headers=key)).json()["data"]
    assert sorted(n["id"] for n in listed if n["type"] == "omni.quota.threshold_crossed") == sorted(i for i, _, _ in first)
    slo_first = slo_alerts(deployment.database_url, deployment.schema, 3)
    assert [(kind, alert) for _, kind, alert, _ in slo_first] == [
        ("omni.slo.alert_fired", "page"),
        ("omni.slo.alert_fired", "ticket"),
        ("omni.slo.alert_resolved", "page"),
    ]

    # Both processes' /metrics pass promtool's lint, with the pools, the produce and the fold's freshness.
    api_metrics = httpx.get(deployment.url + "/metrics").text
    worker_metrics = httpx.get(deployment.worker.url("/metrics")).text
    check_metrics(api_metrics)
    check_metrics(worker_metrics)
    assert f'omni_log_records_produced_total{{topic="{deployment.topics.usage}"}}' in api_metrics
    assert 'omni_db_pool_connections{pool="' in api_metrics and "omni_redis_pool_connections" in api_metrics
    assert 'omni_views_lag_seconds{partition="' in worker_metrics and 'omni_db_pool_max_connections{pool="' in worker_metrics

    # One trace from the client's request, through Kafka, into the worker's fold and its commit,
    # exported by both processes with OTLP.
    caller = "8bf92f3577b34da6a3ce929d0e0e4730"
    traced = httpx.post(
        deployment.url + "/v1/events",
        json=cloud_event("traced", type_="call"),
        headers={**key, "Content-Type": "application/cloudevents+json", "traceparent": f"00-{caller}-00f067aa0ba902b7-01"},
        timeout=30,
    )
    assert traced.status_code == 202, traced.text
    usage = deployment.topics.usage
    deadline = time.monotonic() + 30
    while True:
        spans = {(s.service, s.name): s for s in otlp.received() if s.trace_id == caller}
        if {("omni-worker", f"process {usage}"), ("omni-worker", "write views")} <= set(spans):
            break
        assert time.monotonic() < deadline, f"no worker span in the caller's trace: {sorted(spans)}"
        time.sleep(0.1)
    server, send = spans[("omni-api", "POST /v1/events")], spans[("omni-api", f"send {usage}")]
    process, write = spans[("omni-worker", f"process {usage}")], spans[("omni-worker", "write views")]
    assert (server.kind, send.kind, process.kind) == (2, 4, 5)  # server, producer, consumer
    assert send.parent_span_id == server.span_id and process.parent_span_id == send.span_id
    assert write.parent_span_id == process.span_id

    # A replay: the whole log folded again, by a new worker, into views of its own.
    deployment.worker.ensure_dead()
    replay_schema = deployment.schema + "_replay"
    env = {**deployment.worker.env, "OMNI_DATABASE_SCHEMA": replay_schema, "OMNI_WORKER_METRICS_PORT": str(free_port())}
    replayer = WorkerProcess(env, tmp_path / "logs", name="replay")
    replayer.start()
    try:
        deadline = time.monotonic() + 120
        while len(notices_or_none(deployment.database_url, replay_schema)) < len(THRESHOLDS):
            assert replayer.exited is None, replayer.report()
            assert time.monotonic() < deadline, f"the replay did not notify\n{replayer.report()}"
            time.sleep(0.2)
        assert slo_alerts(deployment.database_url, replay_schema, 3) == slo_first, "the same SLO alerts, with the same ids"
        time.sleep(1.0)  # nothing more comes
        assert notices(deployment.database_url, replay_schema) == first, "the same notifications, with the same ids"
        assert slo_alerts(deployment.database_url, replay_schema, 3) == slo_first
    finally:
        replayer.ensure_dead()
        drop_schema(deployment.database_url, replay_schema)


def slo_alerts(database_url: str, schema: str, count: int, timeout: float = 60) -> list[tuple[str, str, str, str]]:
    """Wait until the schema's views hold `count` SLO alert transitions (never more); them, in time order."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(database_url) as conn:
                rows = conn.execute(
                    f'SELECT id, type, alert, occurred_at FROM "{schema}".slo_notifications ORDER BY occurred_at, type, alert'
                ).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []
        assert len(rows) <= count, rows
        if len(rows) == count:
            return [tuple(r) for r in rows]  # type: ignore[misc]
        assert time.monotonic() < deadline, f"timed out waiting for {count} SLO alerts in {schema} ({rows})"
        time.sleep(0.1)


def notices_or_none(database_url: str, schema: str) -> list[tuple[str, str, int]]:
    try:
        return notices(database_url, schema)
    except psycopg.errors.UndefinedTable:
        return []
