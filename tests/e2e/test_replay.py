"""Replays in both modes (README, "Replay"): a rebuild equal to the live views row for row, every
changed row reported, a swap that makes the rebuild live, a replay failing midway that leaves the
live views as they were, point-in-time views, and a log that no replay writes to."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from omni import failpoints
from omni.bootstrap import build_replayer
from omni.cli import app
from projections.invoices import BillingPeriod
from stores import shadow as shadows
from stores import views
from streams.replay import BadReplay, Mode, Request
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni, embedded_settings, served
from tests.e2e.test_invoices import after, close, invoices, use
from tests.e2e.test_invoices import setup as invoice_setup
from tests.e2e.test_plans_and_quotas import (
    TOKENS,
    consume,
    fold_the_first_record_of_its_catch_up,
    on_a_tokens_plan,
    on_plan,
    put_plan,
    quota,
    start_the_counters,
)
from tests.topic_records import assert_readable_by_outsiders

TABLES = sorted({t for fold in shadows.FOLDS.values() for t in fold.tables} | {shadows.NOTIFICATIONS, "checkpoints"})


def snapshot(omni: Omni) -> dict[str, Any]:
    with omni.platform.db.transaction() as tx:
        return {table: sorted(map(repr, tx.execute(f"SELECT * FROM {table}"))) for table in TABLES}


async def log_ends(omni: Omni) -> dict[str, dict[int, int]]:
    return {topic: await omni.platform.log.end_offsets(topic) for topic in omni.platform.topics.all()}


def shadows_left(omni: Omni) -> list[str]:
    settings = omni.platform.settings
    if settings.mode == "embedded":
        return sorted(p.name for p in settings.data_dir.glob("views.replay-*"))
    with omni.platform.db.transaction() as tx:
        rows = tx.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE ?", (f"{settings.database_schema}_replay_%",))
    return sorted(str(row[0]) for row in rows)


async def test_replays_rebuild_diff_swap_and_fail_without_touching_the_live_views_or_the_log(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await put_plan(omni, "small", {"meter": "tokens", "limit": 1000, "period": "MONTH", "thresholds": [50, 100]}, status=201)
    tenant_id, key = await omni.tenant()
    await on_plan(omni, tenant_id, "small")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    early = [cloud_event(f"a{i}", data={"tokens": 300}, time=an_hour_ago) for i in range(4)]
    assert (await omni.send(key, early)).status_code == 202
    await omni.settle()
    cut = datetime.now(UTC)  # everything above was recorded by now, nothing below
    assert (await omni.send(key, [cloud_event("b1", data={"tokens": 50}, time=an_hour_ago)])).status_code == 202
    await omni.settle()
    assert sum(Decimal(str(r["value"])) for r in await omni.query(key, "tokens")) == 1250
    await omni.settle()  # the query's own api_call event too
    live = snapshot(omni)
    assert len(live["notifications"]) == 2 and len(live["audit_entries"]) >= 4  # both thresholds; the commands' trail
    ends = await log_ends(omni)
    replayer = build_replayer(omni.platform.settings, omni.platform.db, omni.platform.log)

    # A full rebuild equals the live views, row for row; it folded every record of its topics.
    outcome = await replayer.run(Request(mode=Mode.DIFF))
    assert outcome.differences == []
    topics = omni.platform.topics
    assert outcome.progress.done == sum(
        sum(ends[t].values()) for t in (topics.control, topics.usage, topics.api_calls, topics.audit)
    )
    assert outcome.progress.per_second > 0

    # Every changed row is reported, from each side; only in the projections named.
    with omni.platform.db.transaction() as tx:
        tx.execute(
            "UPDATE meter_totals SET total = '7' WHERE meter = 'tokens' AND resolution = (SELECT max(resolution) FROM meter_totals)"
        )
        tx.execute("DELETE FROM audit_heads WHERE chain = ?", (tenant_id,))
        tx.execute("DELETE FROM tenants")
    tampered = snapshot(omni)
    found = (await replayer.run(Request(("meters", "audit"), Mode.DIFF))).differences
    assert {(d.table, d.side) for d in found} == {("meter_totals", "live"), ("meter_totals", "replay"), ("audit_heads", "replay")}
    assert [d.row[0] for d in found if d.table == "audit_heads"] == [tenant_id]
    assert [d.row for d in found if d.table == "meter_totals" and d.side == "live"][0][5] in ("7", Decimal(7))

    # A replay that fails midway leaves the live views as they were, and no shadow behind.
    failpoints.arm(failpoints.METERS_BEFORE_COMMIT, "raise", on_hit=1)
    try:
        with pytest.raises(failpoints.FailpointHit):
            await replayer.run(Request(("meters",), Mode.SWAP))
    finally:
        failpoints.disarm_all()
    assert snapshot(omni) == tampered
    assert shadows_left(omni) == []

    # A swap makes the rebuild live: every view as before the tampering, sent notifications still sent.
    assert (await replayer.run(Request(("meters", "audit", "catalog"), Mode.SWAP))).swapped
    assert snapshot(omni) == live
    await omni.settle()  # the live folds go on from the swapped offsets: nothing to fold again, nothing sent again
    assert snapshot(omni) == live

    # Point in time: only the records the log held at `cut` (4 x 300 tokens, by hand; 1250 live).
    kept = (await replayer.run(Request(("meters",), Mode.BUILD, until=cut))).kept
    assert kept is not None
    past = shadows.reopen(omni.platform.db, kept)
    try:
        with past.db.transaction() as tx:
            definition = views.meter_definition(tx, "tokens")
            assert definition is not None
            rows = views.query_meter(
                tx, tenant_id, definition, start=None, end=None, window_size=None, group_by=[], by_subject=False, subjects=[]
            )
        assert sum(Decimal(str(row.value)) for row in rows) == 1200
    finally:
        past.drop()

    with pytest.raises(BadReplay):
        await replayer.run(Request(("meters",), Mode.DIFF, until=datetime.now(UTC) + timedelta(minutes=1)))
    with pytest.raises(ValueError, match="unknown projection 'nope'"):
        await replayer.run(Request(("nope",), Mode.DIFF))
    assert shadows_left(omni) == []
    assert await log_ends(omni) == ends  # no replay wrote to the log, nor sent a notification again


def test_omni_replay_on_the_command_line_and_killed_midway(tmp_path: Path) -> None:
    """`omni replay` in embedded mode: a diff (exit 0, then 1 with the changed row printed), a swap,
    bad requests (exit 2), and a replay killed midway (SIGKILL) that leaves the live views as they were."""
    settings = embedded_settings(tmp_path / "data")

    async def fill() -> str:
        async with served(settings) as omni:
            await omni.meter(**TOKENS)
            _, key = await omni.tenant()
            assert (await omni.send(key, [cloud_event(f"e{i}", data={"tokens": 10 + i}) for i in range(5)])).status_code == 202
            await omni.settle()
        return key

    asyncio.run(fill())
    env = {"OMNI_DATA_DIR": str(settings.data_dir), "OMNI_ADMIN_KEY": ADMIN, "OMNI_USAGE_PARTITIONS": "3"}
    cli = CliRunner()
    done = cli.invoke(app, ["replay", "meters", "--diff"], env=env)
    assert done.exit_code == 0, done.output
    assert "0 rows differ" in done.output and "events/s" in done.output
    views_file = settings.data_dir / "views.sqlite"
    with sqlite3.connect(views_file) as db:
        db.execute("UPDATE meter_totals SET count = 99")
    differs = cli.invoke(app, ["replay", "meters", "--diff"], env=env)
    assert differs.exit_code == 1 and "meter_totals\tlive\t" in differs.output and ", 99, " in differs.output, differs.output

    def live_rows() -> list[tuple[Any, ...]]:
        with sqlite3.connect(views_file) as db:
            return db.execute("SELECT * FROM meter_totals ORDER BY 1, 2, 3, 4").fetchall()

    before = live_rows()
    killed = subprocess.run(
        [sys.executable, "-m", "omni.cli", "replay", "meters", "--swap"],
        env={**os.environ, **env, "OMNI_FAILPOINTS": "meters.before_commit=kill"},
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert live_rows() == before  # untouched; the dead replay's shadow file is left behind
    for leftover in settings.data_dir.glob("views.replay-*"):
        leftover.unlink()

    swapped = cli.invoke(app, ["replay", "meters", "--swap"], env=env)
    assert swapped.exit_code == 0 and "swapped" in swapped.output, swapped.output
    assert all(row[4] != 99 for row in live_rows()) and len(live_rows()) == len(before)
    for bad in (["replay", "nope"], ["replay", "--until", "2999-01-01T00:00:00Z"], ["replay", "--until", "yesterday"]):
        refused = cli.invoke(app, bad, env=env)
        assert refused.exit_code == 2 and "omni replay:" in refused.output, refused.output
    assert not list(settings.data_dir.glob("views.replay-*"))


async def test_a_meter_as_of_an_instant_counts_only_the_events_recorded_by_then(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant()
    an_hour_ago = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    two_hours_ago = an_hour_ago - timedelta(hours=1)

    async def send(*events: dict[str, Any]) -> datetime:
        assert (await omni.send(key, list(events))).status_code == 202
        return datetime.now(UTC)  # after the answer: these were recorded by then, the next ones after

    before = datetime.now(UTC)
    first = await send(
        cloud_event("a", data={"tokens": 100}, time=an_hour_ago), cloud_event("b", data={"tokens": 20}, time=an_hour_ago)
    )
    second = await send(
        cloud_event("c", data={"tokens": 3}, time=two_hours_ago), cloud_event("a", data={"tokens": 100}, time=an_hour_ago)
    )
    await send(cloud_event("d", data={"tokens": 4000}, time=an_hour_ago))
    await omni.settle()

    def total(rows: list[dict[str, Any]]) -> Decimal:
        return sum((Decimal(str(row["value"])) for row in rows), Decimal(0))

    def at(moment: datetime) -> str:
        return moment.isoformat().replace("+00:00", "Z")

    # By hand: a and b (120) were recorded by `first`; c (3) by `second` (a again is a duplicate); d after.
    assert total(await omni.query(key, "tokens", as_of=at(first))) == 120
    assert total(await omni.query(key, "tokens", as_of=at(second))) == 123
    assert total(await omni.query(key, "tokens")) == 4123
    assert await omni.query(key, "tokens", as_of=at(before)) == []
    # `to` bounds event time instead: c happened first, however late it was recorded.
    assert total(await omni.query(key, "tokens", to=at(an_hour_ago))) == 3
    assert total(await omni.query(key, "tokens", to=at(an_hour_ago), as_of=at(first))) == 0
    by_minute = await omni.query(key, "tokens", window_size="MINUTE", as_of=at(second))
    assert [(row["window_start"], Decimal(str(row["value"]))) for row in by_minute] == [
        (at(two_hours_ago), 3),
        (at(an_hour_ago), 120),
    ]
    for bad in (at(datetime.now(UTC) + timedelta(minutes=5)), "2024-05-01T12:00:00", "yesterday"):
        refused = await omni.client.get("/v1/meters/tokens/query", params={"as_of": bad}, headers=omni.auth(key))
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json", refused.text


async def test_quotas_and_invoices_as_of_an_instant_are_as_the_platform_knew_them(omni: Omni) -> None:
    """Quotas: the plan, then an override, then more usage; invoices: a close, then a void. Each
    `as_of` sees what the log had recorded by then, worked out by hand below."""
    ((tenant_id, key),) = await invoice_setup(omni)
    await put_plan(omni, "small", {"meter": "tokens", "limit": 1000, "period": "MONTH"}, status=201)
    before_plan = datetime.now(UTC)
    await on_plan(omni, tenant_id, "small")
    await use(omni, key, tokens=300)
    await omni.settle()
    first = datetime.now(UTC)
    override = await omni.client.put(
        f"/v1/tenants/{tenant_id}/quotas/tokens", json={"limit": 5000, "period": "MONTH"}, headers=omni.auth(ADMIN)
    )
    assert override.status_code == 204, override.text
    await omni.settle()
    second = datetime.now(UTC)
    await use(omni, key, tokens=200)
    await omni.settle()

    def at(moment: datetime) -> str:
        return moment.isoformat().replace("+00:00", "Z")

    async def quotas(**params: str) -> list[tuple[str, Any, Any, str]]:
        answer = await omni.client.get("/v1/quotas", params=params, headers=omni.auth(key))
        assert answer.status_code == 200, answer.text
        return [(q["meter"], q["limit"], q["used"], q["source"]) for q in answer.json()["data"]]

    assert await quotas(as_of=at(before_plan)) == []  # the tenant's plan (pro) had no entitlement yet
    assert await quotas(as_of=at(first)) == [("tokens", 1000, 300, "plan")]
    assert await quotas(as_of=at(second)) == [("tokens", 5000, 300, "override")]
    assert await quotas() == [("tokens", 5000, 500, "override")]
    one = await omni.client.get("/v1/quotas/tokens", params={"as_of": at(first)}, headers=omni.auth(key))
    assert one.status_code == 200 and (one.json()["limit"], one.json()["used"]) == (1000, 300), one.text

    await on_plan(omni, tenant_id, "pro")  # the plan with prices: "small" bills nothing
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    before_close = datetime.now(UTC)
    assert (await close(omni, this_month.text)).status_code == 200
    (invoice,) = await invoices(omni, key)
    closed = datetime.now(UTC)
    voided = await omni.client.post(f"/v1/invoices/{invoice['id']}/void", json={"reason": "ops"}, headers=omni.auth(ADMIN))
    assert voided.status_code == 200, voided.text
    await omni.settle()

    async def listed(**params: str) -> dict[str, str]:
        answer = await omni.client.get("/v1/invoices", params=params, headers=omni.auth(key))
        assert answer.status_code == 200, answer.text
        return {d["id"]: d["status"] for d in answer.json()["data"]}

    credit_note = voided.json()["credit_note"]["id"]
    assert await listed(as_of=at(before_close)) == {}
    assert await listed(as_of=at(closed)) == {invoice["id"]: "finalized"}
    assert await listed() == await listed(as_of=at(datetime.now(UTC))) == {invoice["id"]: "void", credit_note: "finalized"}
    then = await omni.client.get(f"/v1/invoices/{invoice['id']}", params={"as_of": at(closed)}, headers=omni.auth(key))
    assert then.status_code == 200 and then.json() == invoice, then.text
    unborn = await omni.client.get(f"/v1/invoices/{invoice['id']}", params={"as_of": at(before_close)}, headers=omni.auth(key))
    assert unborn.status_code == 404, unborn.text
    for path in ("/v1/quotas", "/v1/quotas/tokens", "/v1/invoices", f"/v1/invoices/{invoice['id']}"):
        for bad in (at(datetime.now(UTC) + timedelta(minutes=5)), "2024-05-01T12:00:00", "yesterday"):
            refused = await omni.client.get(path, params={"as_of": bad}, headers=omni.auth(key))
            assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json", refused.text
    assert shadows_left(omni) == []


async def test_replays_as_jobs_diff_swap_and_one_at_a_time_per_projection(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant()
    assert (await omni.send(key, [cloud_event(f"e{i}", data={"tokens": i + 1}) for i in range(20)])).status_code == 202
    await omni.settle()
    admin = omni.auth(ADMIN)

    async def replay(body: dict[str, Any]) -> dict[str, Any]:
        started = await omni.client.post("/v1/admin/replays", json=body, headers=admin)
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["state"] in ("queued", "running", "done") and started.headers["location"] == f"/v1/admin/replays/{job['id']}"
        deadline = time.monotonic() + 30
        while job["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.02)  # the job runs on this event loop: give it turns
            answer = await omni.client.get(f"/v1/admin/replays/{job['id']}", headers=admin)
            assert answer.status_code == 200, answer.text
            job = answer.json()
        return job

    # Kafka mode: half the usage topic's partitions folded by a process of its own, as in large replays.
    omni.platform.replays.replayer.shard_from = 0
    same = await replay({"projections": ["meters"], "mode": "diff"})
    omni.platform.replays.replayer.shard_from = 10**9
    assert same["state"] == "done" and same["differences"] == 0, same
    assert same["progress"]["done"] == same["progress"]["total"] > 20 and same["events_per_second"] > 0
    with omni.platform.db.transaction() as tx:
        tx.execute("UPDATE meter_totals SET count = 99 WHERE meter = 'tokens'")
        changed = len(tx.execute("SELECT 1 FROM meter_totals WHERE meter = 'tokens'"))
    found = await replay({"projections": ["meters"], "mode": "diff"})
    assert found["differences"] == 2 * changed and found["swapped"] is False
    swapped = await replay({"projections": ["meters"], "mode": "swap"})
    assert swapped["state"] == "done" and swapped["swapped"] is True and swapped["differences"] is None

    # One at a time per projection: a job that holds the meters (queued, its process alive) refuses another.
    held = omni.platform.replays.start(["meters"], Mode.SWAP)
    busy = await omni.client.post("/v1/admin/replays", json={"projections": ["meters", "audit"]}, headers=admin)
    assert busy.status_code == 409 and busy.headers["content-type"] == "application/problem+json", busy.text
    assert held in busy.json()["detail"]
    assert (await omni.client.post("/v1/admin/replays", json={"projections": ["quotas"], "mode": "swap"}, headers=admin)).status_code == 409  # fmt: skip
    assert (await replay({"projections": ["audit"], "mode": "diff"}))["state"] == "done"  # another projection runs
    await omni.settle()
    trail = await omni.client.get("/v1/audit", params={"action": "replay.start"}, headers=admin)
    assert trail.status_code == 200, trail.text
    outcomes = sorted(e["outcome"] for e in trail.json()["data"])  # each start audited: four jobs, two refusals
    assert outcomes == ["accepted"] * 4 + ["rejected"] * 2, outcomes
    with omni.platform.db.transaction() as tx:  # its process died: it stops beating
        tx.execute("UPDATE replay_jobs SET beat_us = 0 WHERE id = ?", (held,))
    dead = (await omni.client.get(f"/v1/admin/replays/{held}", headers=admin)).json()
    assert dead["state"] == "failed" and "stopped" in dead["error"]
    again = await omni.client.post("/v1/admin/replays", json={"projections": ["meters"]}, headers=admin)
    assert again.status_code == 202, again.text  # the dead job holds nothing (this one is stopped with the platform)

    for bad in (
        {"projections": ["nope"]},
        {"mode": "rebuild"},
        {"projections": "meters"},
        {"tenant_id": "x"},
        {"projections": []},
    ):
        refused = await omni.client.post("/v1/admin/replays", json=bad, headers=admin)
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json", refused.text
    assert refused.json()["errors"][0]["location"] == "body.projections", "an empty list is not taken for every projection"
    assert (await omni.client.get("/v1/admin/replays/nope", headers=admin)).status_code == 404
    with omni.platform.db.transaction() as tx:
        tx.execute("UPDATE replay_jobs SET beat_us = 0")  # the job started above stopped: it holds nothing
    everything = await omni.client.post("/v1/admin/replays", headers=admin)  # no body: a diff of every projection
    assert everything.status_code == 202, everything.text
    assert (everything.json()["projections"], everything.json()["mode"]) == (
        ["meters", "quotas", "invoices", "slos", "audit", "gdpr", "catalog"],
        "diff",
    )


async def notified(omni: Omni, key: str) -> list[dict[str, Any]]:
    response = await omni.client.get("/v1/notifications", headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


async def notices_published(omni: Omni) -> list[dict[str, Any]]:
    """The data of every notice on the notifications topic, as an outside consumer reads it."""
    log, topic = omni.platform.log, omni.platform.topics.notifications
    found = []
    for partition in range(omni.platform.topics.partitions(topic)):
        for record in await log.read(topic, partition, 0, 1000):
            found.append(assert_readable_by_outsiders(record.headers, record.key, record.value).data)
    return found


async def test_a_swap_keeps_the_threshold_notices_a_quota_change_found_as_they_were_published(omni: Omni) -> None:
    """Usage first, its quota after (a tenant signed up on a plan not published yet, as in the
    README's first session): the plan's publication finds the threshold reached, and notifies it as
    of then with the usage folded by then. A replay folds the catalog first, so it finds the same
    threshold at the usage event that reached it, earlier and with less used; a swap wrote that over
    the notice already published, and GET /v1/notifications told another moment and amount than
    the notifications topic had."""
    await omni.meter(**TOKENS)
    tenant_id, key = await omni.tenant(plan="later")
    usage = [cloud_event(f"u{i}", data={"tokens": tokens}) for i, tokens in enumerate((812, 10, 5))]
    assert (await omni.send(key, usage)).status_code == 202
    await omni.settle()
    await put_plan(omni, "later", {"meter": "tokens", "limit": 1000, "period": "MONTH", "thresholds": [80]}, status=201)
    await omni.settle()
    before = await notified(omni, key)
    assert [(n["threshold"], n["used"]) for n in before] == [(80, 827)]
    published = await notices_published(omni)
    assert [(n["id"], n["used"], n["occurred_at"]) for n in published] == [(before[0]["id"], 827, before[0]["occurred_at"])]

    replayer = build_replayer(omni.platform.settings, omni.platform.db, omni.platform.log)
    assert (await replayer.run(Request(mode=Mode.SWAP))).swapped
    await omni.settle()
    assert await notified(omni, key) == before  # as the topic told it
    assert await notices_published(omni) == published  # and nothing published again


# The hot quota counters across a swap of the meters' views (README, "Replay"): built again when
# the swap changes what they count, from the views swapped in, so consume decides exactly after it.


def meters_generation(omni: Omni) -> int:
    with omni.platform.db.transaction() as tx:
        return views.meters_generation(tx)


def rebuilds() -> float:
    return REGISTRY.get_sample_value("omni_quota_ledger_rebuilds_total") or 0.0


async def swap_meters(omni: Omni, *, tell_the_counters: bool = True) -> None:
    """A replay of the meters swapped in, by the platform's own replays (which tell its quota
    counters), or as `omni replay --swap` in another process that died before telling them."""
    assert omni.platform.quotas is not None
    told = omni.platform.quotas.views_swapped if tell_the_counters else None
    replayer = build_replayer(omni.platform.settings, omni.platform.db, omni.platform.log, told)
    assert (await replayer.run(Request(("meters",), Mode.SWAP))).swapped


async def test_a_swap_ahead_of_the_live_fold_has_the_quota_counters_count_what_the_fold_skips(omni: Omni) -> None:
    """The replay folds to the log's end while the live fold is behind, so the swap moves the live
    fold past facts it never counted. Embedded mode's counters lost them (the quota read 600 and
    consume accepted up to 1,000 more); now the counters are built again from the views swapped in."""
    tenant_id, key = await on_a_tokens_plan(omni, 1000, "DAY")
    await omni.settle()
    await start_the_counters(omni)
    assert (await omni.send(key, [cloud_event(f"f{i}", data={"tokens": 300}) for i in range(2)])).status_code == 202
    await omni.settle()
    assert (await omni.send(key, [cloud_event("late", data={"tokens": 300})])).status_code == 202  # not folded live
    generation = meters_generation(omni)
    await swap_meters(omni)
    assert meters_generation(omni) == generation + 1
    await omni.settle()
    assert (await quota(omni, key, "tokens"))["used"] == 900
    assert (await consume(omni, key, "tokens", 101)).status_code == 429, "900 are used"
    accepted = await consume(omni, key, "tokens", 100)
    assert accepted.status_code == 200 and accepted.json()["used"] == 1000, accepted.text


async def catching_up_when_swapped(omni: Omni, *, tell_the_counters: bool) -> str:
    """A meter defined over 100 tokens, a quota of 150 on it, its catch-up one record (50) in when a
    replay swaps in views where it has folded its whole history; the tenant's key."""
    from unittest.mock import AsyncMock, patch

    tenant_id, key = await omni.tenant()
    await omni.meter(**TOKENS)
    await omni.settle()
    await start_the_counters(omni)  # built, as by a running API: the catch-up counts into them
    assert (await omni.send(key, [cloud_event(f"early-{i}", data={"tokens": 50}) for i in range(2)])).status_code == 202
    await omni.settle()
    await omni.meter(**{**TOKENS, "slug": "late"})
    with patch.object(omni.platform.runner, "catch_up", AsyncMock(return_value=0)):
        await put_plan(omni, "late", {"meter": "late", "limit": 150, "period": "DAY"}, status=201)
        await on_plan(omni, tenant_id, "late")
        await omni.settle()
        await fold_the_first_record_of_its_catch_up(omni)
        assert (await quota(omni, key, "late"))["used"] == 50, "half its history counted when the swap comes"
        await swap_meters(omni, tell_the_counters=tell_the_counters)
    return key


async def test_a_swap_that_ends_a_meters_catch_up_has_its_quota_count_its_whole_history(omni: Omni) -> None:
    """The swap makes the meter live with its history folded, so its own catch-up stops: its counters
    held 50 of the 100 and stayed there, and consume accepted 60 past the limit of 150."""
    key = await catching_up_when_swapped(omni, tell_the_counters=True)
    await omni.settle()
    assert sum(row["value"] for row in await omni.query(key, "late")) == 100
    assert (await quota(omni, key, "late"))["used"] == 100
    assert (await consume(omni, key, "late", 60)).status_code == 429, "100 were used"
    accepted = await consume(omni, key, "late", 50)
    assert accepted.status_code == 200 and accepted.json()["used"] == 150, accepted.text


async def test_counters_built_from_views_swapped_out_are_built_again_at_the_start(omni: Omni) -> None:
    """A swap by a process that died before telling the counters (or `omni replay` beside a stopped
    API): the counters hold the generation of the views they were built from, so the next start
    builds them again."""
    key = await catching_up_when_swapped(omni, tell_the_counters=False)
    await start_the_counters(omni)
    assert (await quota(omni, key, "late"))["used"] == 100
    assert (await consume(omni, key, "late", 60)).status_code == 429, "100 were used"
    before = rebuilds()
    await start_the_counters(omni)
    assert rebuilds() == before, "built once: the next start finds them built from these views"


async def test_counters_built_from_views_swapped_out_are_built_again_at_the_folds_next_batch(omni: Omni) -> None:
    """As above, with the API running on: the fold's next batch finds the views' generation moved."""
    key = await catching_up_when_swapped(omni, tell_the_counters=False)
    assert (await omni.send(key, [cloud_event("after", data={"tokens": 1})])).status_code == 202
    await omni.settle()
    assert (await consume(omni, key, "late", 50)).status_code == 429, "101 were used"
    accepted = await consume(omni, key, "late", 49)
    assert accepted.status_code == 200 and accepted.json()["used"] == 150, accepted.text


async def test_a_swap_that_changes_nothing_the_counters_count_builds_nothing(omni: Omni) -> None:
    """A swap of views equal to the live ones (the live fold at the log's end, no meter catching
    up) leaves the counters as they are: no rebuild, so no consume waits for one."""
    tenant_id, key = await on_a_tokens_plan(omni, 1000, "DAY")
    await omni.settle()
    await start_the_counters(omni)
    assert (await consume(omni, key, "tokens", 10)).status_code == 200
    await omni.settle()
    generation, before = meters_generation(omni), rebuilds()
    await swap_meters(omni)
    await omni.settle()
    assert meters_generation(omni) == generation and rebuilds() == before
    accepted = await consume(omni, key, "tokens", 990)
    assert accepted.status_code == 200 and accepted.json()["used"] == 1000, accepted.text
