"""Usage in, meters out: exact values, windows, groups, late meters, duplicates."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from tests.conftest import cloud_event
from tests.e2e.conftest import SINGLE, Omni

TOKENS = {
    "slug": "tokens",
    "event_type": "inference",
    "aggregation": "SUM",
    "value_property": "$.data.tokens",
    "group_by": {"model": "$.data.model"},
}


def minute(offset: int) -> datetime:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(minutes=offset)


async def test_sum_meter_is_exact_and_grouped(omni: Omni) -> None:
    _, key = await omni.tenant()
    await omni.meter(**TOKENS)
    events = [
        cloud_event(
            f"e{i}", subject=f"user-{i % 2}", time=minute(10), data={"tokens": "0.1", "model": "small" if i % 3 else "large"}
        )
        for i in range(30)
    ]
    events.append(cloud_event("big", time=minute(10), data={"tokens": 2**62, "model": "large"}))
    response = await omni.send(key, events)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 31
    await omni.settle()

    total = await omni.query(key, "tokens")
    assert len(total) == 1
    assert total[0]["value"] == Decimal("3.0") + 2**62
    raw = (await omni.client.get("/v1/meters/tokens/query", headers=omni.auth(key))).text
    assert str(2**62 + 3) + ".0" in raw  # exact in the JSON text itself, no float rounding

    by_model = {row["group_by"]["model"]: row["value"] for row in await omni.query(key, "tokens", group_by="model")}
    assert by_model == {"small": Decimal("2.0"), "large": Decimal("1.0") + 2**62}

    by_subject = await omni.query(key, "tokens", group_by="subject", subject=["user-0", "user-1"])
    assert {row["subject"] for row in by_subject} == {"user-0", "user-1"}


async def test_usage_consumed_without_a_subject_groups_under_null(omni: Omni) -> None:
    """Consume takes no subject if the gateway has none: grouped by subject, that usage shows under
    null, as a missing dimension does (a CloudEvent's subject is never empty when present)."""
    _, key = await omni.tenant()
    await omni.meter(**TOKENS)
    await omni.settle()  # consume reads the meter's definition from the catalog
    response = await omni.send(key, [cloud_event("named", time=minute(1), data={"tokens": 4, "model": "small"})])
    assert response.status_code == 202, response.text
    for body in ({"amount": 5, "idempotency_key": "c-1"}, {"amount": 6, "idempotency_key": "c-2", "subject": "user-1"}):
        consumed = await omni.client.post("/v1/quotas/tokens/consume", json=body, headers=omni.auth(key))
        assert consumed.status_code == 200, consumed.text
    await omni.settle()

    by_subject = {row["subject"]: row["value"] for row in await omni.query(key, "tokens", group_by="subject")}
    assert by_subject == {None: 5, "user-1": 10}
    assert [row["subject"] for row in await omni.query(key, "tokens", group_by="model")] == [None, None]


async def test_windows_follow_event_time(omni: Omni) -> None:
    _, key = await omni.tenant()
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    base = minute(0) - timedelta(hours=3)
    events = [cloud_event(f"c{i}", type_="call", time=base + timedelta(minutes=i)) for i in range(90)]
    assert (await omni.send(key, events)).status_code == 202
    await omni.settle()
    rows = await omni.query(key, "calls", window_size="MINUTE")
    assert len(rows) == 90 and all(row["value"] == 1 for row in rows)
    hours = await omni.query(key, "calls", window_size="HOUR")
    assert sum(row["value"] for row in hours) == 90
    clipped = await omni.query(
        key,
        "calls",
        window_size="HOUR",
        **{"from": (base + timedelta(minutes=30)).isoformat(), "to": (base + timedelta(minutes=60)).isoformat()},
    )
    assert sum(row["value"] for row in clipped) == 30
    crosses_an_hour = (base + timedelta(minutes=30)).minute > 30
    assert len(clipped) == (2 if crosses_an_hour else 1)  # hours cut to the range
    assert clipped[0]["window_start"].startswith((base + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M"))
    assert clipped[-1]["window_end"].startswith((base + timedelta(minutes=60)).strftime("%Y-%m-%dT%H:%M"))


async def test_late_events_land_in_their_own_windows_and_too_late_ones_are_refused(omni: Omni) -> None:
    _, key = await omni.tenant()
    await omni.meter(**TOKENS)
    now = minute(0)
    await omni.send(key, [cloud_event(f"new{i}", data={"tokens": 1, "model": "m"}, time=now) for i in range(3)])
    await omni.settle()
    # Hours and days late, newest first, after the current minute was already counted.
    late_at = [now - timedelta(days=6), now - timedelta(hours=5), now - timedelta(minutes=42)]
    late = [cloud_event(f"late{i}", data={"tokens": 10 * (i + 1), "model": "m"}, time=at) for i, at in enumerate(late_at)]
    assert (await omni.send(key, list(reversed(late)))).status_code == 202
    too_late = cloud_event("too-late", data={"tokens": 1000, "model": "m"}, time=now - timedelta(days=7, minutes=5))
    refused = await omni.send(key, [too_late])
    await omni.settle()

    assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
    assert "acceptance window" in refused.text
    since = (now - timedelta(days=8)).isoformat()
    rows = await omni.query(key, "tokens", window_size="MINUTE", **{"from": since})
    assert {row["window_start"][:16]: row["value"] for row in rows} == {
        at.strftime("%Y-%m-%dT%H:%M"): value for at, value in [(late_at[0], 10), (late_at[1], 20), (late_at[2], 30), (now, 3)]
    }
    days = await omni.query(key, "tokens", window_size="DAY", **{"from": since})
    assert sum(row["value"] for row in days) == 63  # the refused event is nowhere


async def test_duplicates_count_once_even_in_a_concurrent_storm(omni: Omni) -> None:
    _, key = await omni.tenant()
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    event = cloud_event("same-id", type_="call")
    body = orjson.dumps(event)
    responses = await asyncio.gather(
        *[omni.client.post("/v1/events", content=body, headers={**omni.auth(key), "Content-Type": SINGLE}) for _ in range(10)]
    )
    assert all(r.status_code == 202 for r in responses)
    assert sum(r.json()["accepted"] for r in responses) == 1
    assert sum(r.json()["duplicates"] for r in responses) == 9
    await omni.settle()
    assert [row["value"] for row in await omni.query(key, "calls")] == [1]
    # The same id from another source is another event.
    assert (await omni.send(key, [cloud_event("same-id", type_="call", source="other")])).json()["accepted"] == 1


async def test_a_meter_defined_later_covers_the_whole_history(omni: Omni) -> None:
    _, key = await omni.tenant()
    events = [cloud_event(f"e{i}", data={"tokens": i, "model": "m"}) for i in range(500)]
    assert (await omni.send(key, events)).status_code == 202
    await omni.settle()
    await omni.meter(**TOKENS)
    await omni.meter(slug="inferences", event_type="inference", aggregation="COUNT")
    await omni.settle()
    more = [cloud_event(f"late{i}", data={"tokens": 1, "model": "m"}) for i in range(5)]
    assert (await omni.send(key, more)).status_code == 202
    await omni.settle()
    assert [row["value"] for row in await omni.query(key, "tokens")] == [sum(range(500)) + 5]
    assert [row["value"] for row in await omni.query(key, "inferences")] == [505]


async def test_each_aggregation(omni: Omni) -> None:
    _, key = await omni.tenant()
    for aggregation in ("SUM", "MAX", "MIN", "AVG", "LATEST", "UNIQUE_COUNT"):
        await omni.meter(slug=aggregation.lower(), event_type="latency", aggregation=aggregation, value_property="$.data.ms")
    values = [5, 1, 9, 3]
    events = [
        cloud_event(f"l{i}", type_="latency", time=minute(5) + timedelta(seconds=i), data={"ms": v}) for i, v in enumerate(values)
    ]
    events.append(cloud_event("dup-value", type_="latency", time=minute(5) + timedelta(seconds=30), data={"ms": 9}))
    assert (await omni.send(key, events)).status_code == 202
    await omni.settle()
    got = {slug: (await omni.query(key, slug))[0]["value"] for slug in ("sum", "max", "min", "avg", "latest", "unique_count")}
    assert got == {"sum": 27, "max": 9, "min": 1, "avg": Decimal("5.4"), "latest": 9, "unique_count": 4}


async def test_api_calls_are_metered(omni: Omni) -> None:
    tenant_id, key = await omni.tenant()
    await omni.meter(
        slug="api-calls",
        event_type="api_call",
        aggregation="COUNT",
        group_by={"route": "$.data.route", "status": "$.data.status"},
    )
    await omni.settle()  # the tenant view is folded from the log
    for _ in range(3):
        await omni.client.get(f"/v1/tenants/{tenant_id}", headers=omni.auth(key))
    await omni.client.get("/v1/tenants/not-mine", headers=omni.auth(key))
    await omni.settle()
    rows = await omni.query(key, "api-calls", group_by=["route", "status"])
    counts = {(r["group_by"]["route"], r["group_by"]["status"]): r["value"] for r in rows}
    assert counts[("/v1/tenants/{tenant_id}", 200)] == 3
    assert counts[("/v1/tenants/{tenant_id}", 404)] == 1


async def test_metrics_are_exposed_for_prometheus(omni: Omni) -> None:
    _, key = await omni.tenant()
    assert (await omni.send(key, [cloud_event("m1")])).status_code == 202
    response = await omni.client.get("/metrics")
    assert response.status_code == 200
    assert 'omni_events_total{outcome="accepted"}' in response.text
    assert 'omni_http_requests_total{method="POST",route="/v1/events",status="202"}' in response.text


async def all_records(omni: Omni, topic: str) -> list:
    log, topics = omni.platform.log, omni.platform.topics
    return [r for p in range(topics.partitions(topic)) for r in await log.read(topic, p, 0, 10_000)]


async def test_every_topic_holds_cloudevents_that_outside_consumers_read(omni: Omni) -> None:
    """What the README's "Topics" promises, in each mode: every record is a structured-mode
    CloudEvent (record header content-type, traceparent as a record header) that the CloudEvents
    SDK's Kafka binding reads and the envelope's JSON Schema takes; the usage topic holds the
    tenants' own events only, with nothing personal about the caller; api_call events have a topic
    of their own; the audit trail keeps where each command came from."""
    from schemas.envelope import STRUCTURED, decode
    from tests.topic_records import assert_readable_by_outsiders

    tenant_id, key = await omni.tenant()
    await omni.meter(**TOKENS)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {
        **omni.auth(key),
        "Content-Type": SINGLE,
        "traceparent": f"00-{trace}-00f067aa0ba902b7-01",
        "User-Agent": "agent/1",
    }
    traced = cloud_event("traced", data={"tokens": 3, "model": "large"}) | {"region": "eu", "tracestate": "a=b"}
    assert (await omni.client.post("/v1/events", content=orjson.dumps(traced), headers=headers)).status_code == 202
    assert (await omni.send(key, [cloud_event("plain", data={"tokens": 4, "model": "small"})])).status_code == 202
    await omni.settle()  # the tenant view is folded from the log
    assert (
        await omni.client.get(f"/v1/tenants/{tenant_id}", headers={**omni.auth(key), "User-Agent": "agent/1"})
    ).status_code == 200
    await omni.settle()

    topics = omni.platform.topics
    read = {topic: await all_records(omni, topic) for topic in topics.all()}
    events = {
        topic: [assert_readable_by_outsiders(r.headers, r.key, r.value) for r in records] for topic, records in read.items()
    }
    usage = {e.source_id: e for e in events[topics.usage]}
    assert set(usage) == {"traced", "plain"}
    assert {e.tenant_id for e in usage.values()} == {tenant_id}
    assert usage["traced"].traceparent is not None and usage["traced"].traceparent.split("-")[1] == trace
    assert usage["traced"].extensions == {"region": "eu", "tracestate": "a=b"}
    [traced_record] = [r for r in read[topics.usage] if decode(r.value).source_id == "traced"]
    assert dict(traced_record.headers) == {
        "content-type": STRUCTURED.encode(),
        "traceparent": usage["traced"].traceparent.encode(),
    }
    for record in read[topics.usage] + read[topics.api_calls]:
        assert b"agent/1" not in record.value and b"127.0.0.1" not in record.value  # no user agent, no IP address
    calls = events[topics.api_calls]
    assert {e.type for e in calls} == {"api_call"} and {e.tenant_id for e in calls} == {tenant_id, "_platform"}
    assert any(e.data["route"] == "/v1/tenants/{tenant_id}" and e.actor.key_id for e in calls if e.tenant_id == tenant_id)
    control = events[topics.control]
    assert {e.type for e in control} >= {"omni.tenant.created", "omni.api_key.issued", "omni.meter.defined"}
    assert all(type(e.extensions.get("storeposition")) is int for e in control)
    audit = events[topics.audit]
    assert {e.data["action"] for e in audit} >= {"tenant.create", "meter.define"}
    assert events[topics.notifications] == []
    rows = await omni.query(key, "tokens", group_by=["model"])
    assert {r["group_by"]["model"]: r["value"] for r in rows} == {"large": 3, "small": 4}

    if omni.platform.settings.mode.value == "kafka":
        # And straight from the broker, with no code of Omni's in between.
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=omni.platform.settings.kafka_bootstrap_servers, enable_auto_commit=False)
        await consumer.start()
        try:
            for topic, records in read.items():
                partitions = [TopicPartition(topic, p) for p in range(topics.partitions(topic))]
                consumer.assign(partitions)
                await consumer.seek_to_beginning(*partitions)
                wanted = {(r.partition, r.offset): (r.key.encode(), r.value, r.headers) for r in records}
                fetched = {}
                while not wanted.keys() <= fetched.keys():  # (api_call events may have come since)
                    for batch in (await consumer.getmany(timeout_ms=1000)).values():
                        fetched.update({(m.partition, m.offset): m for m in batch})
                for place, (record_key, value, record_headers) in wanted.items():
                    message = fetched[place]
                    assert (message.key, message.value, tuple(message.headers)) == (record_key, value, record_headers)
                    assert_readable_by_outsiders(message.headers, message.key, message.value)
        finally:
            await consumer.stop()


async def test_the_callers_trace_reaches_the_log(omni: Omni) -> None:
    from schemas.envelope import decode

    _, key = await omni.tenant()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {**omni.auth(key), "Content-Type": SINGLE, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    response = await omni.client.post("/v1/events", content=orjson.dumps(cloud_event("traced")), headers=headers)
    assert response.status_code == 202
    assert response.headers["traceparent"].split("-")[1] == trace
    topic = omni.platform.topics.usage
    stored = [
        decode(r.value)
        for p in range(omni.platform.topics.partitions(topic))
        for r in await omni.platform.log.read(topic, p, 0, 100)
    ]
    event = next(e for e in stored if e.source_id == "traced")
    assert event.traceparent is not None and event.traceparent.split("-")[1] == trace


async def test_one_trace_runs_from_the_request_through_the_log_to_the_views(omni: Omni) -> None:
    """The tracing middleware's server span is the request's span (none from FastAPI's own
    telemetry, no operation spans); its child `send` (PRODUCER) is the context the record carries in its
    `traceparent` header, through the log (Kafka in Kafka mode); the fold's `process` span
    (CONSUMER) continues it, and `write views` spans the commit: one trace id from the client's
    request to the views. A batch folding records of several traces is a root span linking each."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    usage = omni.platform.topics.usage
    try:
        _, key = await omni.tenant()
        await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
        caller = "5bf92f3577b34da6a3ce929d0e0e4737"
        headers = {**omni.auth(key), "Content-Type": SINGLE, "traceparent": f"00-{caller}-00f067aa0ba902b7-01"}
        event = cloud_event("one-trace", type_="call")
        response = await omni.client.post("/v1/events", content=orjson.dumps(event), headers=headers)
        assert response.status_code == 202
        await omni.settle()
        assert [row["value"] for row in await omni.query(key, "calls")] == [1]
        spans = [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == caller]

        # Two events, each in a trace of its client's, folded in one batch.
        traces = ["6bf92f3577b34da6a3ce929d0e0e4738", "7bf92f3577b34da6a3ce929d0e0e4739"]
        both = [
            cloud_event(f"linked-{i}", type_="call") | {"traceparent": f"00-{t}-00f067aa0ba902b7-01"}
            for i, t in enumerate(traces)
        ]
        assert (await omni.send(key, both)).status_code == 202
        await omni.settle()
        linking = [
            s
            for s in exporter.get_finished_spans()
            if s.kind is SpanKind.CONSUMER and {format(link.context.trace_id, "032x") for link in s.links} == set(traces)
        ]
    finally:
        exporter.shutdown()
    # The request's own api_call record continues its trace too, when it has been folded already
    # (Kafka mode appends it in the background): left aside here.
    api_calls = {s.context.span_id for s in spans if s.name == f"process {omni.platform.topics.api_calls}"}
    spans = [s for s in spans if s.context.span_id not in api_calls and (s.parent is None or s.parent.span_id not in api_calls)]
    assert sorted((s.kind.name, s.name) for s in spans) == [
        ("CONSUMER", f"process {usage}"),
        ("INTERNAL", "write views"),
        ("PRODUCER", f"send {usage}"),
        ("SERVER", "POST /v1/events"),
    ]
    named = {s.name: s for s in spans if s.kind is not SpanKind.INTERNAL}
    server, send, process = named["POST /v1/events"], named[f"send {usage}"], named[f"process {usage}"]
    [write] = [
        s for s in spans if s.kind is SpanKind.INTERNAL and s.parent is not None and s.parent.span_id == process.context.span_id
    ]
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 202
    assert send.parent is not None and send.parent.span_id == server.context.span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.attributes is not None and process.attributes["messaging.destination.name"] == usage
    assert write.end_time is not None and process.end_time is not None and write.end_time <= process.end_time
    handed_on = response.headers["traceparent"].split("-")
    assert handed_on[1] == caller and handed_on[2] == format(server.context.span_id, "016x")
    [batch] = linking
    assert batch.parent is None and format(batch.context.trace_id, "032x") not in traces


async def test_a_redis_flush_mid_stream_still_counts_every_event_once(omni: Omni) -> None:
    """Kafka mode: Redis holds the door's claims. Losing them (a restart without persistence,
    a failover) lets repeats through to the log, where the projector's own record drops them."""
    if omni.platform.settings.mode != "kafka":
        pytest.skip("only Kafka mode keeps the claims in Redis")
    import redis

    tenant_id, key = await omni.tenant()
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    first = [cloud_event(f"e{i}", type_="call") for i in range(50)]
    assert (await omni.send(key, first)).json()["accepted"] == 50

    with redis.Redis.from_url(omni.platform.settings.redis_url) as client:
        claims = list(client.scan_iter(f"omni:seen:{tenant_id}:*", count=1000))
        assert len(claims) == 50
        client.delete(*claims)

    repeated = await omni.send(key, first + [cloud_event(f"e{i}", type_="call") for i in range(50, 80)])
    assert repeated.json()["accepted"] == 80, "the door forgot the first 50"
    await omni.settle()
    assert [row["value"] for row in await omni.query(key, "calls")] == [80]


async def test_an_ingest_request_with_a_known_key_hops_to_no_worker_thread(omni: Omni, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread hop costs about a tenth of a small request's CPU: none on the hot path, once the
    key is verified and kept (FastAPI runs plain `def` dependencies and routes in worker threads,
    through anyio). The embedded log's own SQLite write is not the framework's and not counted."""
    import anyio.to_thread

    _, key = await omni.tenant()
    assert (await omni.send(key, [cloud_event("first")])).status_code == 202  # verifies and keeps the key
    hops: list[str] = []
    hop = anyio.to_thread.run_sync

    async def counted(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(getattr(func, "__qualname__", repr(func)))
        return await hop(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    assert (await omni.send(key, [cloud_event("second")])).status_code == 202
    assert hops == []
