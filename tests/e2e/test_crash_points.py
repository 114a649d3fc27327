"""Crash points (omni/failpoints.py), embedded mode: `omni serve` is killed with SIGKILL at exactly
one named point, at a known hit, is restarted, and the client retries what got no answer. The
views end exactly equal to the events sent, and every control-plane fact is in them once.

A kill is known to have landed where the test says because the point is the only thing that
sends SIGKILL: the process must have exited with -9 when the first request went unanswered."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from omni import failpoints
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH
from tests.e2e.test_crash_restart_embedded import Server

BATCHES, PER_BATCH = 6, 200
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


class ArmedServer(Server):
    """`omni serve` with OMNI_FAILPOINTS set for its first run only."""

    def __init__(self, data_dir: Path, failpoint: str) -> None:
        super().__init__(data_dir)
        self.failpoint = failpoint
        self.kills = 0

    def start(self) -> None:
        armed = self.failpoint if self.kills == 0 else ""
        os.environ[failpoints.ENVIRONMENT], os.environ["OMNI_METER_API_CALLS"] = armed, "false"
        try:
            super().start()
        finally:
            del os.environ[failpoints.ENVIRONMENT], os.environ["OMNI_METER_API_CALLS"]

    def call(self, request: Callable[[], httpx.Response]) -> httpx.Response:
        """`request()`; if it goes unanswered, the failpoint must have killed the server: restart
        it (disarmed) and send the request again, as a client retries."""
        try:
            return request()
        except httpx.TransportError as unanswered:
            assert self.process is not None
            code = self.process.wait(timeout=30)
            assert code == -signal.SIGKILL, f"the server went away with {code}, not at {self.failpoint}: {unanswered!r}"
            self.kills += 1
            self.start()
            return request()


@pytest.mark.parametrize(
    "failpoint",
    [
        f"{failpoints.METERS_BEFORE_COMMIT}=kill@3",  # buckets and checkpoints written, not committed
        f"{failpoints.METERS_AFTER_COMMIT}=kill@3",  # committed, not yet acknowledged
        f"{failpoints.CATALOG_BEFORE_COMMIT}=kill@2",  # a meter's definition folded, not committed
        f"{failpoints.RELAY_BEFORE_PUBLISH}=kill@2",  # read from the event store, not published
        f"{failpoints.RELAY_AFTER_PUBLISH}=kill@2",  # published, the relay's position not saved
        f"{failpoints.INGEST_AFTER_APPEND}=kill@2",  # durable on the log, not answered
    ],
)
def test_a_kill_at_each_crash_point_loses_nothing_and_counts_nothing_twice(tmp_path: Path, failpoint: str) -> None:
    server = ArmedServer(tmp_path / "data", failpoint)
    server.start()
    try:
        tenant = server.call(lambda: created_tenant(server))
        key = {"Authorization": f"Bearer {tenant['api_key']}"}
        for meter in (
            {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"},
            {"slug": "inferences", "event_type": "inference", "aggregation": "COUNT"},
        ):
            defined = server.call(lambda meter=meter: defined_meter(server, meter))  # type: ignore[misc]
            assert defined.status_code in (201, 409), defined.text  # 409: it was defined before the kill
        truth = Decimal(0)
        for b in range(BATCHES):
            events = [cloud_event(f"b{b}-{i}", data={"tokens": (b * PER_BATCH + i) % 7 + 1}) for i in range(PER_BATCH)]
            body = orjson.dumps(events)
            answer = server.call(
                lambda body=body: httpx.post(  # type: ignore[misc]
                    server.url + "/v1/events", content=body, headers={**key, "Content-Type": BATCH}, timeout=30
                )
            )
            assert answer.status_code == 202, answer.text
            truth += sum(e["data"]["tokens"] for e in events)
            # Each batch folded before the next is sent: one fold commit (or more) per batch, so the
            # Nth hit of a fold's point falls inside this run, whatever the machine's speed.
            server.call(lambda b=b: folded(server, key, (b + 1) * PER_BATCH))  # type: ignore[misc]
        assert server.kills == 1, f"{failpoint} was never reached"
        assert meter_value(server, key, "inferences") == BATCHES * PER_BATCH
        assert meter_value(server, key, "tokens") == truth
        time.sleep(0.5)  # and nothing is applied twice later
        assert meter_value(server, key, "inferences") == BATCHES * PER_BATCH
        tenants = httpx.get(server.url + "/v1/tenants", headers=ADMIN_HEADERS).json()["data"]
        assert [t["name"] for t in tenants] == ["acme"]  # a republished creation is folded once
        assert {m["slug"] for m in httpx.get(server.url + "/v1/meters", headers=key).json()["data"]} == {"tokens", "inferences"}
    finally:
        server.stop()


def created_tenant(server: Server) -> dict[str, Any]:
    """The tenant, created now or (after a kill that left its creation unanswered) found and given a key."""
    existing = httpx.get(server.url + "/v1/tenants", headers=ADMIN_HEADERS).json()["data"]
    if existing:
        issued = httpx.post(server.url + f"/v1/tenants/{existing[0]['id']}/keys", json={}, headers=ADMIN_HEADERS).json()
        return {"id": existing[0]["id"], "api_key": issued["api_key"]}
    response = httpx.post(server.url + "/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=ADMIN_HEADERS, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def defined_meter(server: Server, meter: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/v1/meters", json=meter, headers=ADMIN_HEADERS, timeout=30)


def meter_value(server: Server, key: dict[str, str], slug: str) -> Decimal:
    data = orjson.loads(httpx.get(server.url + f"/v1/meters/{slug}/query", headers=key).content)["data"]
    return Decimal(str(data[0]["value"])) if data else Decimal(0)


def folded(server: Server, key: dict[str, str], count: int, timeout: float = 60, slug: str = "inferences") -> httpx.Response:
    """Wait until the count meter `slug` holds `count` events (never more); the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(server.url + f"/v1/meters/{slug}/query", headers=key)
        assert response.status_code == 200, f"the count meter cannot be read: {response.text}"
        data = orjson.loads(response.content)["data"]
        seen = data[0]["value"] if data else 0
        assert seen <= count, f"{seen} events counted, {count} sent"
        if seen == count:
            return response
        assert time.monotonic() < deadline, f"timed out waiting for {count} events in the views ({seen} there)"
        time.sleep(0.02)


LIMIT = 4  # a hard daily limit on a count meter, consumed LIMIT + 2 times, one consume at a time
CALLS = {"slug": "calls", "event_type": "request", "aggregation": "COUNT"}
METERED = {"entitlements": [{"meter": "calls", "limit": LIMIT, "period": "DAY", "thresholds": [50, 100]}]}


@pytest.mark.parametrize(
    "failpoint",
    [
        f"{failpoints.QUOTA_BEFORE_APPEND}=kill@3",  # decided, not on the log (one transaction: nothing stays)
        f"{failpoints.QUOTA_AFTER_APPEND}=kill@3",  # on the log with its answer, not answered
    ],
)
def test_a_kill_at_each_quota_crash_point_keeps_consume_exact_and_notifies_once(tmp_path: Path, failpoint: str) -> None:
    server = ArmedServer(tmp_path / "data", failpoint)
    server.start()
    try:
        tenant = server.call(lambda: created_tenant(server))
        key = {"Authorization": f"Bearer {tenant['api_key']}"}
        defined = server.call(lambda: defined_meter(server, CALLS))
        assert defined.status_code in (201, 409), defined.text
        plan = server.call(lambda: httpx.put(server.url + "/v1/plans/metered", json=METERED, headers=ADMIN_HEADERS, timeout=30))
        assert plan.status_code in (200, 201), plan.text
        on_plan = f"{server.url}/v1/tenants/{tenant['id']}/plan"
        assigned = server.call(lambda: httpx.put(on_plan, json={"plan": "metered"}, headers=ADMIN_HEADERS, timeout=30))
        assert assigned.status_code == 204, assigned.text
        answers = {}
        for i in range(LIMIT + 2):
            answer = server.call(lambda i=i: consumed(server, key, f"req-{i}"))  # type: ignore[misc]
            answers[f"req-{i}"] = (answer.status_code, answer.json())
        assert [status for status, _ in answers.values()] == [200] * LIMIT + [429, 429]  # the limit reached, never passed
        assert [body["used"] for status, body in answers.values()] == [1, 2, 3, 4, 4, 4]
        notes = server.call(lambda: notified(server, key, 2))
        published(server, 2)
        assert server.kills == 1, f"{failpoint} was never reached"

        for idempotency_key, answer in answers.items():  # after the restart, each key answers as it did
            again = consumed(server, key, idempotency_key)
            assert (again.status_code, again.json()) == answer
        folded(server, key, LIMIT, slug="calls")
        quota = httpx.get(server.url + "/v1/quotas/calls", headers=key).json()
        assert (quota["used"], quota["remaining"]) == (LIMIT, 0)
        assert sorted(n["threshold"] for n in notes) == [50, 100]
        time.sleep(0.5)  # and nothing is recorded or published twice later
        consumes, refusals, notices = on_the_log(server)
        assert consumes == [f"req-{i}" for i in range(LIMIT)]  # each accepted consume once
        assert refusals == ["req-4", "req-5"]
        assert notices == sorted(n["id"] for n in notes)  # each threshold once on the notifications topic
        assert notified(server, key, 2) == notes
    finally:
        server.stop()


def test_a_kill_after_notices_are_recorded_publishes_each_once(tmp_path: Path) -> None:
    """notices.after_record: a quota assigned over usage already folded (the catalog's sweep finds
    both thresholds reached), both notices stored in the event store, the server killed before their
    view rows are marked recorded. After the restart they are recorded again (refused as duplicates)
    and each is listed and published once."""
    server = ArmedServer(tmp_path / "data", f"{failpoints.NOTICES_AFTER_RECORD}=kill@1")
    server.start()
    try:
        tenant = server.call(lambda: created_tenant(server))
        key = {"Authorization": f"Bearer {tenant['api_key']}"}
        assert server.call(lambda: defined_meter(server, CALLS)).status_code == 201
        plan = server.call(lambda: httpx.put(server.url + "/v1/plans/metered", json=METERED, headers=ADMIN_HEADERS, timeout=30))
        assert plan.status_code == 201, plan.text
        body = orjson.dumps([cloud_event(f"c{i}", type_="request") for i in range(LIMIT + 2)])
        sent = httpx.post(server.url + "/v1/events", content=body, headers={**key, "Content-Type": BATCH}, timeout=30)
        assert sent.status_code == 202, sent.text
        folded(server, key, LIMIT + 2, slug="calls")
        on_plan = f"{server.url}/v1/tenants/{tenant['id']}/plan"
        assigned = server.call(lambda: httpx.put(on_plan, json={"plan": "metered"}, headers=ADMIN_HEADERS, timeout=30))
        assert assigned.status_code == 204, assigned.text  # (again after a kill that took its answer: the same)
        notes = server.call(lambda: notified(server, key, 2))
        published(server, 2)  # recorded as notices, then published: past the point, so killed there before
        assert server.kills == 1, "notices.after_record was never reached"
        assert sorted(n["threshold"] for n in notes) == [50, 100]
        time.sleep(0.5)  # nothing is recorded or published twice later
        assert on_the_log(server)[2] == sorted(n["id"] for n in notes)
        assert notified(server, key, 2) == notes
    finally:
        server.stop()


def consumed(server: Server, key: dict[str, str], idempotency_key: str) -> httpx.Response:
    body = {"amount": 1, "idempotency_key": idempotency_key}
    return httpx.post(server.url + "/v1/quotas/calls/consume", json=body, headers=key, timeout=30)


def notified(server: Server, key: dict[str, str], count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until the tenant's notifications list `count` notices (never more); them."""
    deadline = time.monotonic() + timeout
    while True:
        notes: list[dict[str, Any]] = httpx.get(server.url + "/v1/notifications", headers=key).json()["data"]
        assert len(notes) <= count, notes
        if len(notes) == count:
            return notes
        assert time.monotonic() < deadline, f"timed out waiting for {count} notifications ({notes})"
        time.sleep(0.02)


def published(server: ArmedServer, count: int, timeout: float = 30) -> None:
    """Wait until the notifications topic holds `count` notices (never more), restarting the server
    if the failpoint killed it meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        server.call(lambda: httpx.get(server.url + "/healthz"))
        notices = on_the_log(server)[2]
        assert len(notices) <= count, notices
        if len(notices) == count:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {count} notices published ({notices})"
        time.sleep(0.02)


def on_the_log(server: Server) -> tuple[list[str], list[str], list[str]]:
    """From the embedded log's file: the idempotency keys of the accepted consumes and of the
    refusals on the usage topic, and the ids of the notices on the notifications topic, sorted."""
    with sqlite3.connect(server.data_dir / "log.sqlite") as log:
        rows = log.execute("SELECT topic, value FROM records WHERE topic IN ('omni.usage', 'omni.notifications')").fetchall()
    events = [(topic, orjson.loads(value)) for topic, value in rows]
    quota_events = [
        e for topic, e in events if topic == "omni.usage" and e["source"] in ("omni://quotas", "omni://quotas/refusals")
    ]
    return (
        sorted(e["id"] for e in quota_events if e["type"] == "request"),
        sorted(e["id"] for e in quota_events if e["type"] == "omni.quota.refused"),
        sorted(e["data"]["id"] for topic, e in events if topic == "omni.notifications"),
    )


def test_a_kill_before_the_audit_fold_commits_links_each_entry_once(tmp_path: Path) -> None:
    """audit.before_commit: the server killed while the second batch of audit entries is linked
    into its chain, before the commit. After the restart the chain holds each audit event on the
    log once, in the log's order, without a gap, and its export verifies."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from projections.audit_verify import Intact, verify

    server = ArmedServer(tmp_path / "data", f"{failpoints.AUDIT_BEFORE_COMMIT}=kill@2")
    server.start()
    try:
        tenant = server.call(lambda: created_tenant(server))
        key = {"Authorization": f"Bearer {tenant['api_key']}"}
        keys_url = f"{server.url}/v1/tenants/{tenant['id']}/keys"
        for i in range(4):
            issued = server.call(lambda i=i: httpx.post(keys_url, json={"label": f"k{i}"}, headers=key, timeout=30))  # type: ignore[misc]
            assert issued.status_code == 201, issued.text
            server.call(lambda: chain_holds_the_log(server, key, tenant["id"]))  # folded before the next command
        assert server.kills == 1, "audit.before_commit was never reached"
        time.sleep(0.5)  # and nothing is linked twice later
        entries = chain_holds_the_log(server, key, tenant["id"])
        assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1)) and len(entries) >= 5
        export = httpx.get(server.url + "/v1/audit/export", headers=key).content.splitlines()
        public_key = load_pem_public_key(httpx.get(server.url + "/v1/audit/public-key", headers=key).content)
        outcome = verify(export, public_key)  # type: ignore[arg-type]
        assert isinstance(outcome, Intact) and outcome.entries == len(entries), outcome
    finally:
        server.stop()


def chain_holds_the_log(server: Server, key: dict[str, str], tenant_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until the tenant's chain lists exactly the distinct audit events the log holds for it,
    in the log's order (never another); the chain."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(server.data_dir / "log.sqlite") as log:
            rows = log.execute("SELECT value FROM records WHERE topic = 'omni.audit' ORDER BY partition, \"offset\"").fetchall()
        on_log = list(dict.fromkeys(e["omniid"] for e in map(orjson.loads, (r[0] for r in rows)) if e["tenantid"] == tenant_id))
        response = httpx.get(server.url + "/v1/audit", params={"limit": 500}, headers=key)
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["data"]
        assert [e["id"] for e in entries] == on_log[: len(entries)], "the chain is not the log's audit events in order"
        if len(entries) == len(on_log):
            return entries
        assert time.monotonic() < deadline, f"timed out: {len(entries)} entries linked, {len(on_log)} on the log"
        time.sleep(0.02)
