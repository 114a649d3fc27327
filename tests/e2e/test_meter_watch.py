"""Live meter watches (`GET /v1/meters/{slug}/watch`) over a real socket, in both modes: the answer at
once, again as the views fold usage (read from the views the folds commit to: SQLite, or
PostgreSQL with the events on Kafka), nothing for other tenants' usage, the bounds, the key
checked as the watch goes on, the problems that end it, and the server's shutdown ending it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.server import Server, server_config
from omni.settings import Settings
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni, embedded_settings, kafka_settings, served, services_or_skip
from tests.e2e.test_http_server import free_port

TOKENS = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}


class Live:
    """An Omni whose app is also served on a socket by `omni serve`'s own server."""

    def __init__(self, omni: Omni, url: str, server: Server) -> None:
        self.omni = omni
        self.url = url
        self.server = server


@contextlib.asynccontextmanager
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with served(settings) as omni:
        port = free_port()
        config = server_config(omni.app, settings, host="127.0.0.1", port=port)
        config.lifespan = "off"  # `served` runs the app's lifespan already
        server = Server(config, omni.app)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            yield Live(omni, f"http://127.0.0.1:{port}", server)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=10)


def settings_for(mode: str, tmp_path: Path, **overrides: Any) -> Settings:
    values = {"watch_poll_ms": 20, "watch_seconds": 30.0} | overrides
    if mode == "embedded":
        return embedded_settings(tmp_path / "data", **values)
    services_or_skip()
    return kafka_settings(uuid.uuid4().hex[:12], **values)


MODES = pytest.mark.parametrize("mode", ["embedded", "kafka"])


class Stream:
    """The events of one watch as they come: (event, id, parsed data), comments left out."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10.0) -> tuple[str, str | None, Any] | None:
        """The next event, or None once the server ended the stream."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if "data" in fields:
                        return fields.get("event", "message"), fields.get("id"), json.loads(fields["data"], parse_float=Decimal)
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
        return None


@contextlib.asynccontextmanager
async def watching(url: str, key: str, slug: str = "tokens", **params: Any) -> AsyncIterator[Stream]:
    headers = {"Authorization": f"Bearer {key}", **params.pop("headers", {})}
    async with (
        httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", f"/v1/meters/{slug}/watch", params=params, headers=headers) as response,
    ):
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        yield Stream(response)


async def usage(omni: Omni, key: str, ids: list[str], tokens: int, *, at: datetime | None = None) -> None:
    events = [cloud_event(i, time=at, data={"tokens": tokens}) for i in ids]
    assert (await omni.send(key, events)).status_code == 202
    await omni.settle()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def query(omni: Omni, key: str, **params: Any) -> Any:
    response = await omni.client.get("/v1/meters/tokens/query", params=params, headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


@MODES
async def test_a_watch_answers_at_once_then_again_each_time_the_views_change_it(mode: str, tmp_path: Path) -> None:
    async with live(settings_for(mode, tmp_path)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant("acme")
        _, other = await omni.tenant("other")
        await omni.settle()
        async with watching(running.url, key, window_size="DAY", group_by="subject") as stream:
            first = await stream.next()
            assert first is not None and first[0] == "usage" and first[2]["data"] == []
            await usage(omni, key, ["a-1", "a-2"], 5)
            event, ident, body = await stream.next() or ("", None, None)
            assert event == "usage" and ident and ident != first[1]
            assert body == await query(omni, key, window_size="DAY", group_by="subject")  # the query's own answer
            assert [row["value"] for row in body["data"]] == [10]
            # Another tenant's usage changes nothing of this answer: nothing is sent for it.
            await usage(omni, other, ["b-1"], 7)
            await usage(omni, key, ["a-3"], 1)
            event, _, body = await stream.next() or ("", None, None)
            assert event == "usage" and [row["value"] for row in body["data"]] == [11]


@MODES
async def test_a_reconnect_holding_the_latest_answer_is_not_sent_it_again(mode: str, tmp_path: Path) -> None:
    async with live(settings_for(mode, tmp_path, watch_seconds=1.0)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant("acme")
        await omni.settle()
        await usage(omni, key, ["a-1"], 3)
        async with watching(running.url, key) as stream:
            event, ident, _ = await stream.next() or ("", None, None)
            assert event == "usage" and ident
            assert await stream.next() is None  # its time is up: the server ends it, the client reconnects
        async with watching(running.url, key, headers={"Last-Event-ID": ident}) as stream:
            assert await stream.next() is None  # nothing new to send in its second
        async with watching(running.url, key, headers={"Last-Event-ID": "an-older-answer"}) as stream:
            again = await stream.next()
            assert again is not None and again[1] == ident


@MODES
async def test_a_tenant_holds_at_most_its_watches_and_a_closed_one_frees_its_place(mode: str, tmp_path: Path) -> None:
    async with live(settings_for(mode, tmp_path, max_watches_per_tenant=2)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant("acme")
        _, other = await omni.tenant("other")
        await omni.settle()
        async with watching(running.url, key) as first, watching(running.url, key) as second:
            assert await first.next() and await second.next()
            async with httpx.AsyncClient(base_url=running.url) as client:
                refused = await client.get("/v1/meters/tokens/watch", headers=omni.auth(key))
                assert refused.status_code == 429, refused.text
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.json()["type"].endswith("/too-many-watches") and refused.headers["retry-after"]
            async with watching(running.url, other) as theirs:  # another tenant's watches are its own
                assert await theirs.next()
        deadline = time.monotonic() + 5
        while running.omni.app.state.watches.count:  # the server saw both clients leave
            assert time.monotonic() < deadline, "a watch whose client left stayed open"
            await asyncio.sleep(0.02)
        async with watching(running.url, key) as again:
            assert await again.next()


async def revoked_while_watching(tmp_path: Path, *, busy: bool) -> None:
    """A second key of a tenant watches; the tenant revokes it (and, `busy`, sends usage at once):
    the watch ends with a 401 problem and nothing more."""
    async with live(settings_for("embedded", tmp_path)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        tenant_id, key = await omni.tenant("acme")
        issued = await omni.client.post(f"/v1/tenants/{tenant_id}/keys", json={"label": "dash"}, headers=omni.auth(key))
        watcher = issued.json()
        await omni.settle()
        async with watching(running.url, watcher["api_key"]) as stream:
            assert await stream.next()
            revoked = await omni.client.delete(f"/v1/keys/{watcher['key_id']}", headers=omni.auth(key))
            assert revoked.status_code == 204
            if busy:
                await usage(omni, key, ["busy-1"], 5)  # the partition moves: a new answer is due
            event, _, problem = await stream.next(timeout=5) or ("", None, None)
            assert event == "problem" and problem["status"] == 401, (event, problem)
            assert await stream.next() is None


async def test_a_revoked_key_ends_the_watch_with_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.meter_watch.HEARTBEAT_SECONDS", 0.1)
    await revoked_while_watching(tmp_path, busy=False)


async def test_a_revoked_key_reads_no_more_usage_while_the_tenant_is_busy(tmp_path: Path) -> None:
    """The quiet-period check never comes while the tenant's usage keeps moving (a walkthrough's
    revoked key read 19 answers in 36 s): the key is checked before each new answer too (the
    heartbeat at its 15 s here, so only that check can end the watch in time)."""
    await revoked_while_watching(tmp_path, busy=True)


async def test_a_meter_grown_past_the_bucket_bound_ends_the_watch_with_422(tmp_path: Path) -> None:
    async with live(settings_for("embedded", tmp_path, max_query_buckets=2)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant("acme")
        await omni.settle()
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        await usage(omni, key, ["a-1"], 1, at=now - timedelta(minutes=3))
        span = {"from": iso(now - timedelta(minutes=10)), "to": iso(now + timedelta(minutes=1)), "window_size": "MINUTE"}
        async with watching(running.url, key, **span) as stream:
            assert await stream.next()
            await usage(omni, key, ["a-2", "a-3"], 1, at=now - timedelta(minutes=2))
            await usage(omni, key, ["a-4"], 1, at=now - timedelta(minutes=1))
            events = [await stream.next(), await stream.next()]
            problems = [e for e in events if e and e[0] == "problem"]
            assert problems and problems[0][2]["type"].endswith("/query-too-large"), events


async def test_shutting_the_server_down_ends_every_watch_at_once(tmp_path: Path) -> None:
    async with live(settings_for("embedded", tmp_path)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant("acme")
        await omni.settle()
        async with watching(running.url, key) as stream:
            assert await stream.next()
            running.server.should_exit = True
            assert await stream.next(timeout=5) is None  # not the watch's 30 s
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient(base_url=running.url) as client:
                    await client.get("/v1/meters/tokens/watch", headers=omni.auth(key))


async def test_what_cannot_be_watched_is_refused_before_the_stream_starts(tmp_path: Path) -> None:
    async with live(settings_for("embedded", tmp_path)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant("acme")
        await omni.settle()
        async with httpx.AsyncClient(base_url=running.url) as client:
            cases = [
                ("/v1/meters/nope/watch", {}, key, 404),
                ("/v1/meters/tokens/watch", {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, key, 422),
                ("/v1/meters/tokens/watch", {"group_by": "region"}, key, 422),
                ("/v1/meters/tokens/watch", {"window_size": "FORTNIGHT"}, key, 422),
                ("/v1/meters/tokens/watch", {}, ADMIN, 403),
                ("/v1/meters/tokens/watch", {}, "omni_nope_nope", 401),
            ]
            for path, params, caller, status in cases:
                response = await client.get(path, params=params, headers=omni.auth(caller))
                assert response.status_code == status, (path, params, response.text)
                assert response.headers["content-type"] == "application/problem+json"
            assert not omni.app.state.watches.count  # none of them opened a watch


async def test_a_tenants_watches_take_turns_and_rest_as_long_as_they_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant's watches answer one at a time (its two watches never at once, apart from its
    queries' turns), and a watch answers again no sooner than its last answer took:
    five watches of a heavy query, woken by each small event of their tenant, held every watch
    thread and slowed other tenants' watches from 0.3 s to 5 s."""
    import threading

    import api.routes.meters as meters_route

    real = meters_route.meter_answer
    calls: list[tuple[str, float, float]] = []  # (the watch's window, start, end)
    at_once = [0, 0]  # now, most
    lock = threading.Lock()

    def slow_answer(platform: Any, tenant_id: str, question: Any) -> dict[str, Any]:
        with lock:
            at_once[0] += 1
            at_once[1] = max(at_once)
        start = time.monotonic()
        time.sleep(0.15)  # a heavy query's time
        try:
            return real(platform, tenant_id, question)
        finally:
            with lock:
                at_once[0] -= 1
                calls.append((str(question.window_size), start, time.monotonic()))

    monkeypatch.setattr(meters_route, "meter_answer", slow_answer)
    async with live(settings_for("embedded", tmp_path)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant("acme")
        await omni.settle()
        async with (
            watching(running.url, key, window_size="DAY") as by_day,
            watching(running.url, key, window_size="HOUR") as by_hour,
        ):
            assert await by_day.next() and await by_hour.next()
            await moving(omni, key, "two")
            assert await by_day.next() and await by_hour.next()
        assert at_once[1] == 1, "the tenant's two watches answered at once"
        async with watching(running.url, key, window_size="MINUTE") as alone:  # no other watch to wait for
            assert await alone.next()
            await moving(omni, key, "one")
            assert await alone.next()
    answers = sorted((start, end) for window, start, end in calls if window == "MINUTE")
    assert len(answers) >= 2, calls
    for (start, end), (next_start, _) in zip(answers, answers[1:], strict=False):
        assert next_start - end >= (end - start) - 0.01, answers  # it rested as long as it answered


async def moving(omni: Omni, key: str, name: str) -> None:
    """The tenant's partition moving far more often than a heavy answer takes."""
    for i in range(12):
        await usage(omni, key, [f"{name}-{i}"], 1)
        await asyncio.sleep(0.03)
