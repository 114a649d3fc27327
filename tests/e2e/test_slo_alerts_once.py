"""SLO alert transitions, embedded mode: each notified exactly once across a SIGKILL after the
notices were stored in the event store (before their view rows were marked recorded), and again,
with the same ids and nothing more published, when the whole log is folded into fresh views."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from omni import failpoints
from schemas.envelope import format_time
from tests.conftest import cloud_event
from tests.e2e.conftest import BATCH
from tests.e2e.test_crash_points import ArmedServer, created_tenant, on_the_log
from tests.promtool import check_metrics

AVAILABILITY = {
    "event_type": "inference",
    "sli": "availability",
    "status_property": "$.data.status",
    "objective": 99,
    "window": "30d",
}


def test_alert_transitions_are_notified_once_across_a_kill_and_a_replay(tmp_path: Path) -> None:
    """Minute 0: 10 good; minute 1: 10 bad; minute 2: 200 good; minute 3: one good. Minute 1's
    windows (evaluated when minute 2 begins) hold 10 bad of 20, burn 50: page and ticket fire at
    minute 2. Minute 2's hold 10 bad of 220, burn 4.5: the page resolves at minute 3 (below 14.4
    and 6), the ticket stays (above 3)."""
    server = ArmedServer(tmp_path / "data", f"{failpoints.NOTICES_AFTER_RECORD}=kill@1")
    server.start()
    try:
        tenant = server.call(lambda: created_tenant(server))
        key = {"Authorization": f"Bearer {tenant['api_key']}"}
        put = server.call(lambda: httpx.put(server.url + "/v1/slos/inference", json=AVAILABILITY, headers=key, timeout=30))
        assert put.status_code == 201, put.text
        t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
        body = orjson.dumps(outage(t0))
        sent = httpx.post(server.url + "/v1/events", content=body, headers={**key, "Content-Type": BATCH}, timeout=30)
        assert sent.status_code == 202, sent.text
        expected = [
            ("omni.slo.alert_fired", "page", t0 + timedelta(minutes=2)),
            ("omni.slo.alert_fired", "ticket", t0 + timedelta(minutes=2)),
            ("omni.slo.alert_resolved", "page", t0 + timedelta(minutes=3)),
        ]
        notes = server.call(lambda: alerts(server, key, 3))
        assert sorted((n["type"], n["alert"], n["occurred_at"]) for n in notes) == sorted(
            (kind, alert, format_time(at)) for kind, alert, at in expected
        )
        published(server, 3)
        assert server.kills == 1, "notices.after_record was never reached"
        assert on_the_log(server)[2] == sorted(n["id"] for n in notes), "each transition published once"

        # A replay: every view emptied and folded again from the log; the event store kept, and the
        # outbox relay's position in it (which lives beside the views, but is no view).
        server.stop()
        with sqlite3.connect(server.data_dir / "views.sqlite") as views:
            tables = [r[0] for r in views.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                if table != "relay_positions" and not table.startswith("sqlite_"):
                    views.execute(f'DELETE FROM "{table}"')
        server.start()
        assert alerts(server, key, 3) == notes, "the same transitions, under the same ids"
        time.sleep(0.3)  # the notices relay has had its turn: nothing more is published
        assert on_the_log(server)[2] == sorted(n["id"] for n in notes)

        # The server's /metrics (embedded: the API and the runner in one process) passes promtool's
        # lint and shows what the fold, the reads and a produce did.
        one_more = orjson.dumps([cloud_event("m4", data={"status": 200}, time=t0 + timedelta(minutes=4))])
        assert httpx.post(server.url + "/v1/events", content=one_more, headers={**key, "Content-Type": BATCH}).status_code == 202
        exposition = httpx.get(server.url + "/metrics").text
        check_metrics(exposition)
        mine = f'owner="{tenant["id"]}",slo="inference"'
        for sample in (
            f'omni_slo_events_total{{outcome="bad",{mine}}} 10.0',
            f'omni_slo_alert_firing{{alert="ticket",{mine}}} 1.0',
            f'omni_slo_alert_firing{{alert="page",{mine}}} 0.0',
            'omni_log_records_produced_total{topic="omni.usage"}',
            'omni_views_lag_seconds{partition="0",projector="meters"}',
            'omni_view_query_seconds_count{view="notifications"}',
        ):
            assert sample in exposition, sample
    finally:
        server.stop()


def outage(t0: datetime, type_: str = "inference") -> list[dict[str, Any]]:
    """Minute 0: 10 good; minute 1: 10 bad; minute 2: 200 good; minute 3: one good (statuses 200, 503).
    For an availability SLO at 99% over 30 days: page and ticket fire at minute 2, the page resolves at 3."""
    events = []
    for n, (good, bad) in enumerate([(10, 0), (0, 10), (200, 0), (1, 0)]):
        at = t0 + timedelta(minutes=n, seconds=30)
        events += [
            cloud_event(f"m{n}-{i}", type_=type_, data={"status": 200 if i < good else 503}, time=at) for i in range(good + bad)
        ]
    return events


def alerts(server: ArmedServer, key: dict[str, str], count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until the tenant's notifications list `count` SLO alerts (never more); them."""
    deadline = time.monotonic() + timeout
    while True:
        notes = [
            n
            for n in httpx.get(server.url + "/v1/notifications", headers=key).json()["data"]
            if n["type"].startswith("omni.slo.")
        ]
        assert len(notes) <= count, notes
        if len(notes) == count:
            return notes
        assert time.monotonic() < deadline, f"timed out waiting for {count} SLO alerts ({notes})"
        time.sleep(0.02)


def published(server: ArmedServer, count: int, timeout: float = 30) -> None:
    """Wait until the notifications topic holds `count` notices, restarting a server the failpoint killed."""
    deadline = time.monotonic() + timeout
    while True:
        server.call(lambda: httpx.get(server.url + "/healthz"))
        found = on_the_log(server)[2]
        assert len(found) <= count, found
        if len(found) == count:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {count} notices published ({found})"
        time.sleep(0.02)
