"""Benchmark 7: quota consume in Kafka mode, beside the I/O it cannot do without.

`POST /v1/quotas/{meter}/consume` over real HTTP to `omni serve` (Kafka mode, a subprocess; one
Faust worker, which folds the catalog the consume reads and the usage events it appends) from
`clients` concurrent keep-alive connections, each sending consumes with unique idempotency keys
for a fixed time; the tenants' plan has a hard limit no run reaches, so every consume is
accepted. Reported: consumes/s, client-side p50/p90/p99, answers by status, the CPU each process
spent per consume. A second phase puts other tenants on a plan whose limit the demand passes:
refusals are answered (and appended to the log) too, and the accepted total must be the limit
exactly.

Baselines, in the same run, on the same Redis and Kafka, from `clients` concurrent asyncio tasks
in this process: (a) EVALSHA of consume's own decision script (streams.redis_quotas.CONSUME) on
keys of their own, one consume a call (the API groups the consumes that arrive together into one
call); (b) aiokafka `send_and_wait`, acks=all and idempotent as the API's producer, of a record
the size of consume's usage event, with its headers, to the partition of the same tenants; (c) the
two chained, and (d) the chain with the call keeping its answer after the send: the I/O of one consume and
nothing else, the floor it is measured against ("share of floor").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from ops.bench.common import (
    ADMIN_KEY,
    KAFKA,
    METER,
    REDIS_URL,
    STOLEN,
    Api,
    Report,
    Stack,
    Table,
    Target,
    broker_pauses,
    cpu_cores,
    cpu_per_event,
    cpu_snapshot,
    kafka_topics,
    load_client,
    machine,
    niceness,
    opt,
    percentile,
    ratio,
    redis_state,
    rewrites_between,
    schedule_shares,
    serve,
    stolen_seconds,
    thread_schedule,
    wait_views_caught_up,
)
from ops.bench.raw_http import RawHttpClient

NAME = "quota_consume"
TARGET_RATE = 2_000.0
TARGET_P99_MS = 25.0
OPEN_LIMIT = 10**11  # a hard limit no run reaches (limits stay below 10^12)


@dataclasses.dataclass
class Options:
    duration: float = opt(20.0, "seconds of measured consumes")
    baseline_duration: float = opt(8.0, "seconds each baseline is measured")
    warmup: float = opt(3.0, "seconds of consumes before the measured ones, not counted")
    clients: int = opt(50, "concurrent clients (keep-alive connections; tasks in the baselines)")
    processes: int = opt(1, "load generator processes the clients are spread over (1: all in this one)")
    tenants: int = opt(4, "tenants the clients consume for, round-robin, spread evenly over the partitions")
    partitions: int = opt(4, "usage topic partitions")
    workers: int = opt(1, "Faust workers (the catalog of meters and plans is folded by them)")
    apis: int = opt(1, "API processes (replicas; the clients spread over them)")
    refusal_duration: float = opt(5.0, "seconds of the phase whose demand passes the limit (0: no such phase)")
    refusal_limit: int = opt(2000, "the hard daily limit of that phase's plan (consumes of 1 each)")
    client: str = opt("raw", "the load's HTTP client: raw (ops/bench/raw_http.py, the lightest) or aiohttp")
    paced_rate: float = opt(TARGET_RATE, "consumes/s offered by the paced phase (0: no such phase)")
    paced_duration: float = opt(15.0, "seconds of the paced phase")
    # The single-host deployment the README recommends: the API first, the workers' folds last (OMNI_CPU_NICE).
    api_nice: int = opt(-10, "CPU niceness the API processes give themselves (0: as the others)")
    worker_nice: int = opt(19, "CPU niceness the Faust workers give themselves (0: as the others)")


# Load: closed-loop clients, each a keep-alive connection --------------------------------------


@dataclasses.dataclass
class Load:
    """What the clients saw between `start` and `end` (wall clock): requests started in that window."""

    latencies: dict[int, list[float]]  # seconds, by status
    failures: Counter[str]  # transport errors, by kind
    started: float
    ended: float
    # (when due, latency, how late the load generator sent it) of each 200. The lateness is the
    # generator's own (its loop woke late) for a client idle when the request fell due; None for a
    # client still waiting on its previous answer then (that wait is the service's).
    timeline: list[tuple[float, float, float | None]] = dataclasses.field(default_factory=list)
    # The first API process's event loop (its main thread) meanwhile: shares running, waiting for a CPU, idle.
    api_loop: dict[str, float] = dataclasses.field(default_factory=dict)
    # Redis's AOF rewrites meanwhile (a fork, then the dataset written out): one suspect of a slow phase.
    redis_rewrites: int = 0
    # The broker's stop-the-world pauses (start, end) that ended meanwhile: every append in flight waits them out.
    broker_pauses: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    # The machine's steal time meanwhile, sampled: (wall clock, CPU seconds other virtual machines
    # took from this one so far). A second the hypervisor took a core away is a slow second for
    # everything on it, whatever the code does.
    steal: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    def merge(self, other: Load) -> None:
        for status, values in other.latencies.items():
            self.latencies.setdefault(status, []).extend(values)
        self.failures.update(other.failures)
        self.timeline += other.timeline

    @property
    def count(self) -> int:
        return sum(map(len, self.latencies.values()))

    def statuses(self) -> dict[str, int]:
        return {str(status): len(values) for status, values in sorted(self.latencies.items())} | dict(self.failures)

    def all(self) -> list[float]:
        return [value for values in self.latencies.values() for value in values]


async def consume_load(
    urls: Sequence[str],
    keys: Sequence[str],
    clients: int,
    first: int,
    run: str,
    start_at: float,
    count_from: float,
    until: float,
    fixed_amount: int,
    client_kind: str = "raw",
    rate: float = 0.0,
    all_clients: int = 0,
) -> Load:
    """`clients` connections (numbered from `first`) consuming from `start_at` to `until` (time.time());
    only requests started from `count_from` on are counted.

    Closed loop (`rate` 0): each client sends its next request when the last one is answered. Paced
    (open loop): the `all_clients` clients together offer `rate` requests/s, client g's i-th request
    due at start_at + (g + i * all_clients) / rate; a latency runs from when the request was due, so
    a client held up by a slow answer counts the wait of those queued behind it (no coordinated
    omission)."""
    load = Load({}, Counter(), count_from, until)
    interval = all_clients / rate if rate else 0.0

    def due(g: int, i: int) -> float | None:
        """When client g's i-th request is due (time.time()), once that time has come; None in a closed loop."""
        return start_at + g / rate + i * interval if rate else None

    async def wait_for_due(g: int, i: int) -> tuple[float, float, float | None]:
        """(now, the moment the latency counts from, how late the request leaves if the client was
        idle when it fell due): a paced request waits until it is due."""
        at = due(g, i)
        if at is None:
            return time.time(), time.perf_counter(), None
        idle = (ahead := at - time.time()) > 0
        if idle:
            await asyncio.sleep(ahead)
        late = max(0.0, time.time() - at)
        return at, time.perf_counter() - late, late if idle else None

    url = f"/v1/quotas/{METER['slug']}/consume"

    def body_of(n: int, i: int) -> bytes:
        return orjson.dumps(
            {
                "amount": fixed_amount or i % 50 + 1,
                "idempotency_key": f"{run}-{n}-{i}",
                "subject": f"customer-{i % 10}",
                "data": {"model": "small"},
            }
        )

    def counted(now: float, begun: float, late: float | None, status: int) -> None:
        if now >= count_from:
            latency = time.perf_counter() - begun
            load.latencies.setdefault(status, []).append(latency)
            if status == 200:
                load.timeline.append((now, latency, late))

    def failed(now: float, failure: Exception) -> None:
        if now >= count_from:
            load.failures[type(failure).__name__] += 1

    async def aiohttp_client(n: int) -> None:
        key = keys[n % len(keys)]
        headers = {**Api.auth(key), "Content-Type": "application/json"}
        target = urls[n % len(urls)] + url
        i = 0
        async with load_client(1) as http:
            while time.time() < until:
                i += 1
                body = body_of(n, i)
                now, begun, late = await wait_for_due(n, i)
                if now >= until:
                    break
                try:
                    async with http.post(target, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except Exception as failure:  # noqa: BLE001 - counted, reported as an error
                    failed(now, failure)
                    continue
                counted(now, begun, late, status)

    async def raw_client(n: int) -> None:
        key = keys[n % len(keys)]
        i = 0
        async with RawHttpClient(urls[n % len(urls)]) as http:
            head = http.request_head(url, {**Api.auth(key), "Content-Type": "application/json"})
            while time.time() < until:
                i += 1
                body = body_of(n, i)
                now, begun, late = await wait_for_due(n, i)
                if now >= until:
                    break
                try:
                    status, _ = await http.post(head, body)
                except Exception as failure:  # noqa: BLE001 - counted, reported as an error
                    failed(now, failure)
                    continue
                counted(now, begun, late, status)

    client = raw_client if client_kind == "raw" else aiohttp_client

    await asyncio.sleep(max(0.0, start_at - time.time()))
    await asyncio.gather(*(client(first + n) for n in range(clients)))
    return load


def by_second(timed: Sequence[tuple[float, float, *tuple[Any, ...]]], first: float) -> dict[int, list[float]]:
    """(when, seconds, ...) records grouped by the whole second since `first` that `when` falls in."""
    seconds: dict[int, list[float]] = {}
    for when, took, *_ in timed:
        seconds.setdefault(max(0, int(when - first)), []).append(took)
    return seconds


def tail_shape(
    timeline: Sequence[tuple[float, float, float | None]], slow: float, pauses: Sequence[tuple[float, float]] = ()
) -> dict[str, Any]:
    """Whether the slow answers (over `slow` seconds) come in bursts or spread out: each second's
    p99 (by when the requests were due), the seconds holding any slow answer, and the share of
    slow answers in the worst second. A burst points at a stall (a collection, a fork, a
    checkpoint); spread out, at a loop busy all along. With the broker's pauses (start, end), also
    the share of slow answers whose wait took in one of them or the queue it left (up to
    `slow` after its end): the part of the tail the broker's collector explains."""
    if not timeline:
        return {}
    seconds = by_second(timeline, min(due for due, *_ in timeline))
    slow_by_second = {s: sum(latency > slow for latency in values) for s, values in seconds.items()}
    slow_total = sum(slow_by_second.values())
    return {
        "each_second_99th_percentile": [  # ms, by the second the requests were due
            round(percentile(seconds[s], 99) * 1000, 1) for s in sorted(seconds)
        ],
        "seconds_with_slow": sum(1 for count in slow_by_second.values() if count),
        "slow_share_in_worst_second": max(slow_by_second.values()) / slow_total if slow_total else 0.0,
        "broker_pauses": {
            "count": len(pauses),
            "total_ms": round(sum(end - start for start, end in pauses) * 1000, 1),
            "max_ms": round(max((end - start for start, end in pauses), default=0.0) * 1000, 1),
        },
        "slow_share_near_broker_pause": (
            sum(1 for due, latency, _ in timeline if latency > slow and _near_pause(due, due + latency, pauses, slow))
            / slow_total
            if slow_total
            else 0.0
        ),
    }


def generator_shape(timeline: Sequence[tuple[float, float, float | None]], slow: float) -> dict[str, Any]:
    """How late the load generator itself sent the requests of clients idle when they fell due:
    its event loop waking late, on the cores it shares with what it measures. A latency counts
    from the due time, so that lateness is inside the clients' figures. Taken out, what is left of
    each latency runs from the request leaving to its answer being read: the service's time plus
    any lateness of the generator in reading the answer, which this cannot see. `slow_only_by_lateness`
    counts the slow answers that would not be slow without the send's lateness."""
    lateness = [late for _, _, late in timeline if late is not None]
    if not lateness:
        return {}
    less = [latency - (late or 0.0) for _, latency, late in timeline]
    return {
        "idle_sends": len(lateness),
        "late_p50_ms": percentile(lateness, 50) * 1000,
        "late_p99_ms": percentile(lateness, 99) * 1000,
        "late_max_ms": max(lateness) * 1000,
        "slow_answers": sum(latency > slow for _, latency, _ in timeline),
        "slow_only_by_lateness": sum(
            1 for _, latency, late in timeline if latency > slow and late is not None and latency - late <= slow
        ),
        "p99_less_lateness_ms": percentile(less, 99) * 1000,
    }


def _near_pause(begun: float, answered: float, pauses: Sequence[tuple[float, float]], drain: float) -> bool:
    """Whether a request's wait overlapped a pause, or the `drain` after it while its queue cleared."""
    return any(begun <= end + drain and answered >= start for start, end in pauses)


async def api_side_times(prefix: str, since: float, until: float) -> list[tuple[float, float]]:
    """The API's own time for each 200 consume answered between `since` and `until` (Unix seconds),
    from its `api_call` records (api.metering: from the request's headers in to its answer),
    as (answered at, seconds). Beside the clients' latencies it tells a stall inside the API's
    handling from a wait before a request is read or after its answer is written."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas.envelope import decode
    from schemas.topics import Topics

    topic = Topics(prefix=prefix).api_calls
    reader = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False, auto_offset_reset="earliest")
    await reader.start()
    times: list[tuple[float, float]] = []
    try:
        cluster = await reader._client.fetch_all_metadata()
        parts = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        if not parts:
            return []
        reader.assign(parts)
        await reader.seek_to_beginning(*parts)
        ends = await reader.end_offsets(parts)

        async def behind() -> bool:
            return any([await reader.position(tp) < end for tp, end in ends.items()])

        while await behind():
            for records in (await reader.getmany(timeout_ms=500, max_records=10_000)).values():
                for record in records:
                    event = decode(record.value)
                    data = event.data if isinstance(event.data, dict) else {}
                    answered = event.event_time.timestamp()
                    if (
                        data.get("status") == 200
                        and str(data.get("route", "")).endswith("/consume")
                        and since <= answered <= until
                    ):
                        times.append((answered, float(data["latency_ms"]) / 1000))
    finally:
        await reader.stop()
    return sorted(times)


def api_side_shape(times: list[tuple[float, float]], first: float) -> dict[str, Any]:
    """The API's own time per consume (api_side_times): p50, p99, and each second's p99 (ms)."""
    if not times:
        return {}
    seconds = by_second(times, first)
    everything = [took for _, took in times]
    return {
        "count": len(times),
        "p50_ms": percentile(everything, 50) * 1000,
        "p99_ms": percentile(everything, 99) * 1000,
        "each_second_99th_percentile": [round(percentile(seconds[n], 99) * 1000, 1) for n in sorted(seconds)],
    }


def consume_load_process(*args: Any) -> Load:
    """One load generator process's share (concurrent.futures runs it in a spawned process)."""
    return asyncio.run(consume_load(*args))


def _ready() -> int:
    return os.getpid()


async def consume_phase(
    stack: Stack,
    o: Options,
    keys: Sequence[str],
    run: str,
    *,
    warmup: float,
    duration: float,
    amount: int = 0,
    rate: float = 0.0,
) -> tuple[Load, dict[str, float]]:
    """Consumes from every client for warmup + duration seconds; the Load of the last `duration`,
    and the cores each process kept busy meanwhile."""
    processes = max(1, o.processes)
    shares = [o.clients // processes + (1 if p < o.clients % processes else 0) for p in range(processes)]
    pool = None
    load_pids: dict[str, int] = {}
    if processes > 1:
        pool = concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        # Start every process (and its imports) before the clock starts.
        loop = asyncio.get_running_loop()
        pids = await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(processes * 4)))
        load_pids = {f"load generator {n + 1}": pid for n, pid in enumerate(sorted(set(pids)))}
    start_at = time.time() + (2.0 if pool else 0.2)
    count_from, until = start_at + warmup, start_at + warmup + duration
    args = [
        (stack.urls, keys, share, sum(shares[:p]), run, start_at, count_from, until, amount, o.client, rate, o.clients)
        for p, share in enumerate(shares)
    ]
    try:
        if pool is None:
            task = asyncio.create_task(consume_load(*args[0]))
        else:
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(asyncio.gather(*(loop.run_in_executor(pool, consume_load_process, *a) for a in args)))
        await asyncio.sleep(max(0.0, count_from - time.time()))
        pids = {**stack.pids(), **load_pids}
        redis_before = await asyncio.to_thread(redis_state)
        before, loop_before, began = cpu_snapshot(pids), thread_schedule(stack.server.pid), time.monotonic()
        steal = asyncio.create_task(asyncio.to_thread(sample_steal, until))
        await asyncio.sleep(max(0.0, until - time.time()))
        after, loop_after, ended = cpu_snapshot(pids), thread_schedule(stack.server.pid), time.monotonic()
        stolen_samples = await steal
        redis_after = await asyncio.to_thread(redis_state)
        loads = await task
    finally:
        if pool is not None:
            pool.shutdown()
    if isinstance(loads, Load):
        total = loads
    else:
        total = Load({}, Counter(), count_from, until)
        for load in loads:
            total.merge(load)
    total.api_loop = schedule_shares(loop_before, loop_after, ended - began)
    total.redis_rewrites = rewrites_between(redis_before, redis_after)
    total.broker_pauses = broker_pauses(count_from, until + 1.0)
    total.steal = stolen_samples
    return total, cpu_cores(before, after)


STEAL_EVERY = 0.05  # seconds between two readings of the machine's steal time


def sample_steal(until: float) -> list[tuple[float, float]]:
    """(wall clock, steal so far) every STEAL_EVERY seconds until `until` (a thread of the bench's)."""
    samples = []
    while (now := time.time()) < until + STEAL_EVERY:
        samples.append((now, stolen_seconds()))
        time.sleep(STEAL_EVERY)
    return samples


def steal_shape(
    timeline: Sequence[tuple[float, float, float | None]], steal: Sequence[tuple[float, float]], slow: float
) -> dict[str, Any]:
    """The cores' worth of time the hypervisor took in each second of the phase (the seconds of
    `tail_shape`: by when requests were due), and how much of it fell in the slow seconds (whose
    p99 passed `slow`) against the others: whether the tail is the machine's or the code's."""
    if not timeline or len(steal) < 2:
        return {}
    first = min(due for due, *_ in timeline)
    seconds = by_second(timeline, first)
    stolen: dict[int, float] = {}
    for (when, before), (_, after) in zip(steal, steal[1:], strict=False):
        second = max(0, int(when - first))
        stolen[second] = stolen.get(second, 0.0) + (after - before)
    each = [round(stolen.get(n, 0.0), 3) for n in sorted(seconds)]
    slow_seconds = [n for n in sorted(seconds) if percentile(seconds[n], 99) > slow]
    others = [n for n in sorted(seconds) if n not in slow_seconds]

    def mean(ns: Sequence[int]) -> float:
        return round(sum(stolen.get(n, 0.0) for n in ns) / len(ns), 3) if ns else 0.0

    return {
        "each_second_stolen_cores": each,
        "slow_seconds": len(slow_seconds),
        "stolen_cores_in_slow_seconds": mean(slow_seconds),
        "stolen_cores_in_other_seconds": mean(others),
        "slow_seconds_with_steal": sum(1 for n in slow_seconds if stolen.get(n, 0.0) >= 0.05),
    }


# Set-up: plans and tenants ---------------------------------------------------------------------


async def put_plan(api: Api, slug: str, limit: int) -> None:
    entitlement = {"meter": METER["slug"], "limit": limit, "period": "DAY", "enforcement": "hard"}
    response = await api.http.put(f"/v1/plans/{slug}", json={"entitlements": [entitlement]}, headers=api.auth(ADMIN_KEY))
    response.raise_for_status()


async def tenants_on_plan(
    stack: Stack, name: str, count: int, partitions: int, plan: str, limit: int
) -> tuple[list[str], list[str]]:
    """(ids, keys) of `count` new tenants spread over the usage partitions, each on `plan`, their quota readable."""
    from schemas.topics import partition_for

    share = -(-count // partitions)
    taken: Counter[int] = Counter()
    ids: list[str] = []
    keys: list[str] = []
    for attempt in range(count * 20):
        tenant_id, key = await stack.api.tenant(f"{name}-{attempt}")
        stack.tenants.append(tenant_id)
        partition = partition_for(tenant_id, partitions)
        if taken[partition] >= share:
            continue
        taken[partition] += 1
        response = await stack.api.http.put(f"/v1/tenants/{tenant_id}/plan", json={"plan": plan}, headers=Api.auth(ADMIN_KEY))
        response.raise_for_status()
        deadline = time.monotonic() + 60
        while True:  # read-your-writes holds for 5 s at most: make sure the quota is in effect
            quota = await stack.api.http.get(f"/v1/quotas/{METER['slug']}", headers=Api.auth(key))
            if quota.status_code == 200 and quota.json()["limit"] == limit:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the quota never showed: {quota.status_code} {quota.text[:300]}")
            await asyncio.sleep(0.1)
        ids.append(tenant_id)
        keys.append(key)
        if len(keys) == count:
            return ids, keys
    raise RuntimeError(f"could not spread {count} tenants over {partitions} partitions")


# Baselines -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timed:
    calls: int
    seconds: float
    latencies: list[float]

    @property
    def per_s(self) -> float:
        return self.calls / self.seconds

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


async def closed_loop(tasks: int, duration: float, call: Callable[[int, int], Awaitable[None]], warmup: float = 1.0) -> Timed:
    """`tasks` concurrent loops of `call(task, i)`; those started in the last `duration` seconds are timed."""
    latencies: list[float] = []
    started = time.monotonic()
    count_from, until = started + warmup, started + warmup + duration

    async def loop(t: int) -> None:
        i = 0
        while (now := time.monotonic()) < until:
            i += 1
            begun = time.perf_counter()
            await call(t, i)
            if now >= count_from:
                latencies.append(time.perf_counter() - begun)

    await asyncio.gather(*(loop(t) for t in range(tasks)))
    return Timed(len(latencies), duration, latencies)


def usage_record(tenant_id: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A usage event as consume appends it (same attributes and sizes), encoded, with its headers."""
    import uuid_utils

    from projections.quotas import CONSUME_SOURCE, QUOTA_CONSUME, consume_mark, period_of
    from schemas.envelope import Actor, Envelope, encode, record_headers
    from schemas.plans import Period

    now = datetime.now(UTC)
    event = Envelope(
        id=str(uuid_utils.uuid7()),
        type=str(METER["event_type"]),
        tenant_id=tenant_id,
        source=CONSUME_SOURCE,
        source_id=f"{uuid.uuid4().hex[:8]}-12-345",
        event_time=now,
        recorded_time=now,
        data={"model": "small", "tokens": 25},
        subject="customer-5",
        actor=Actor("k" * 26),
        extensions={QUOTA_CONSUME: consume_mark(str(METER["slug"]), period_of(now, Period.DAY))},
    )
    return encode(event), list(record_headers(event))


async def baselines(stack: Stack, o: Options, tenants: Sequence[str]) -> dict[str, Timed | int]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from projections.quotas import periods_of
    from schemas.topics import partition_for
    from streams.kafka_log import LINGER_MS, MAX_BATCH_BYTES
    from streams.redis_quotas import CONSUME, PENDING_MS, field
    from streams.redis_wire import redis_client

    prefix = f"omni:quota:{stack.prefix}:raw:"
    redis = redis_client(REDIS_URL)
    consume = redis.register_script(CONSUME)
    topic = f"{stack.prefix}.raw-consume"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, o.partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA, acks="all", enable_idempotence=True, linger_ms=LINGER_MS, max_batch_size=MAX_BATCH_BYTES
    )
    await producer.start()
    records = [usage_record(t) for t in tenants]
    day, month = periods_of(datetime.now(UTC))
    meter = str(METER["slug"])
    try:
        await redis.set(prefix + "built", "e0")
        await producer.send_and_wait(topic, records[0][0], key=tenants[0].encode(), partition=0)  # connections, metadata

        phase = [""]  # each baseline's answers under keys of their own, as consume's idempotency keys are

        def answer(t: int, i: int) -> str:
            return f"{prefix}a:{tenants[t % len(tenants)]}:{phase[0]}-{t}-{i}"

        async def script(t: int, i: int) -> list[Any]:
            tenant = tenants[t % len(tenants)]
            args = [prefix, PENDING_MS, 60_000, 0, tenant, "f" * 64, 25_000, OPEN_LIMIT * 1000, "1", field(meter, day)]
            args += [field(meter, day), field(meter, month), day.text]
            [reply] = await consume(keys=[prefix + "built", answer(t, i)], args=args)  # a group of one
            return reply  # type: ignore[no-any-return]

        async def send(t: int, i: int) -> None:
            tenant = tenants[t % len(tenants)]
            value, headers = records[t % len(records)]
            await producer.send_and_wait(
                topic, value, key=tenant.encode(), partition=partition_for(tenant, o.partitions), headers=headers
            )

        async def chained(t: int, i: int) -> None:
            await script(t, i)
            await send(t, i)

        async def chained_settled(t: int, i: int) -> None:
            reply = await script(t, i)
            await send(t, i)
            pending = reply[4].decode() if isinstance(reply[4], bytes) else str(reply[4])
            kept = pending.replace("pending|", "done|", 1)
            await consume(keys=[prefix + "built", answer(t, i)], args=[prefix, PENDING_MS, 60_000, 1, pending, kept])

        found: dict[str, Timed | int] = {"record_bytes": len(records[0][0])}
        for name, call in (("script", script), ("send", send), ("chain", chained), ("chain_settled", chained_settled)):
            phase[0] = name
            found[name] = await closed_loop(o.clients, o.baseline_duration, call)
        return found
    finally:
        await producer.stop()
        await delete_quota_keys(redis, prefix)
        await redis.aclose()


async def delete_quota_keys(redis: Any, prefix: str) -> None:
    """Consume's answers are kept for the acceptance window (days): do not leave the run's behind."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=prefix + "*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            await redis.delete(*batch)
            batch.clear()
    if batch:
        await redis.delete(*batch)


# The run ---------------------------------------------------------------------------------------


def latency_row(what: str, count: int, seconds: float, latencies: Sequence[float]) -> list[object]:
    return [
        what,
        count,
        count / seconds if seconds else 0.0,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 90) * 1000,
        percentile(latencies, 99) * 1000,
    ]


async def run(o: Options) -> Report:
    from streams.redis_wire import redis_client

    run_id = uuid.uuid4().hex[:8]
    figures: dict[str, Any] = {}
    notes: list[str] = []
    # What earlier runs (or anything else) left in the shared Redis decides how long its AOF rewrites take.
    figures["redis_at_start"] = await asyncio.to_thread(redis_state)
    figures["kafka_topics_at_start"] = await kafka_topics()
    async with serve(
        "kafka", partitions=o.partitions, workers=o.workers, apis=o.apis, api_nice=o.api_nice, worker_nice=o.worker_nice
    ) as stack:
        try:
            await put_plan(stack.api, "bench-open", OPEN_LIMIT)
            chosen, keys = await tenants_on_plan(stack, "consume", o.tenants, o.partitions, "bench-open", OPEN_LIMIT)
            # What the processes run at, not what they were asked: raising the API's priority needs CAP_SYS_NICE.
            figures["niceness"] = {name: niceness(pid) for name, pid in stack.pids().items() if name != "bench client"}
            found = await baselines(stack, o, chosen)
            load, cores = await consume_phase(stack, o, keys, f"{run_id}-c", warmup=o.warmup, duration=o.duration)
            paced: Load | None = None
            paced_cores: dict[str, float] = {}
            api_times: list[tuple[float, float]] = []
            if o.paced_rate > 0:
                # From a steady state: the worker first folds what the closed loop left (at nice 19 it
                # lags while the API keeps the cores busy), so the paced phase does not measure that.
                figures["catch_up_seconds"] = await wait_views_caught_up(stack.prefix, stack.schema)
                paced, paced_cores = await consume_phase(
                    stack, o, keys, f"{run_id}-p", warmup=o.warmup, duration=o.paced_duration, rate=o.paced_rate
                )
                await asyncio.sleep(0.5)  # the API sends its api_call records every 0.2 s
                api_times = await api_side_times(stack.prefix, paced.started, paced.ended + 1.0)
            refusals: Load | None = None
            exact: dict[str, Any] = {}
            if o.refusal_duration > 0:
                await put_plan(stack.api, "bench-tight", o.refusal_limit)
                _, tight = await tenants_on_plan(stack, "refused", 1, 1, "bench-tight", o.refusal_limit)
                refusals, _ = await consume_phase(
                    stack, o, tight, f"{run_id}-r", warmup=0.0, duration=o.refusal_duration, amount=1
                )
                quota = (await stack.api.http.get(f"/v1/quotas/{METER['slug']}", headers=Api.auth(tight[0]))).json()
                accepted = len(refusals.latencies.get(200, []))
                exact = {
                    "limit": o.refusal_limit,
                    "accepted": accepted,
                    "refused": len(refusals.latencies.get(429, [])),
                    "quota_used": quota["used"],
                    "exact": accepted == o.refusal_limit and quota["used"] == o.refusal_limit,
                }
        finally:
            redis = redis_client(REDIS_URL)
            try:
                await delete_quota_keys(redis, f"omni:quota:{stack.prefix}:")
            finally:
                await redis.aclose()

    script, send, chain, settled = (found[k] for k in ("script", "send", "chain", "chain_settled"))
    assert isinstance(script, Timed) and isinstance(send, Timed) and isinstance(chain, Timed) and isinstance(settled, Timed)
    accepted_latencies = load.latencies.get(200, [])
    ours = len(accepted_latencies) / o.duration
    p50, p90, p99 = (percentile(accepted_latencies, q) * 1000 for q in (50, 90, 99))
    stolen = cores.pop(STOLEN)
    per_consume = (
        cpu_per_event(cores, ours) if ours else {role: float("nan") for role in cores}
    )  # none accepted: the table still renders
    figures.update(
        {
            "consume_per_s": ours,
            "consume_p50_ms": p50,
            "consume_p90_ms": p90,
            "consume_p99_ms": p99,
            "statuses": load.statuses(),
            "errors": load.count - len(accepted_latencies),
            "record_bytes": found["record_bytes"],
            "script_per_s": script.per_s,
            "script_p50_ms": script.ms(50),
            "script_p99_ms": script.ms(99),
            "send_per_s": send.per_s,
            "send_p50_ms": send.ms(50),
            "send_p99_ms": send.ms(99),
            "chain_per_s": chain.per_s,
            "chain_p50_ms": chain.ms(50),
            "chain_p99_ms": chain.ms(99),
            "floor_per_s": settled.per_s,
            "floor_p50_ms": settled.ms(50),
            "floor_p99_ms": settled.ms(99),
            "ratio": ratio(ours, settled.per_s),
            "ratio_of_chain": ratio(ours, chain.per_s),
            "p99_over_floor": ratio(p99, settled.ms(99)),
            "cpu_cores": cores,
            "api_loop": load.api_loop,
            "redis_aof_rewrites": load.redis_rewrites,
            "cpu_stolen_cores": stolen,
            "cpu_micros_per_consume": per_consume,
        }
    )
    paced_ok = paced.latencies.get(200, []) if paced is not None else []
    paced_p99 = percentile(paced_ok, 99) * 1000 if paced_ok else float("nan")
    if paced is not None:
        figures["paced"] = {
            "offered_per_s": o.paced_rate,
            "answered_per_s": len(paced_ok) / o.paced_duration,
            "p50_ms": percentile(paced_ok, 50) * 1000,
            "p90_ms": percentile(paced_ok, 90) * 1000,
            "p99_ms": paced_p99,
            "statuses": paced.statuses(),
            "api_loop": paced.api_loop,  # the API's event loop: running, waiting for a CPU, idle
            "redis_aof_rewrites": paced.redis_rewrites,
            "cpu_cores": paced_cores,  # busy while it ran, per role: "other" says whether the machine was quiet
            # What a consume costs each role when consumes arrive spread out (small groups): the
            # figure a change to the API's per-call work moves, and ops.bench.compare reports.
            "cpu_micros_per_consume": cpu_per_event(paced_cores, len(paced_ok) / o.paced_duration) if paced_ok else {},
            **tail_shape(paced.timeline, TARGET_P99_MS / 1000, paced.broker_pauses),
            "steal": steal_shape(paced.timeline, paced.steal, TARGET_P99_MS / 1000),
            "api_side": api_side_shape(api_times, paced.started),
            "load_generator": generator_shape(paced.timeline, TARGET_P99_MS / 1000),
        }
    rows = [
        latency_row("consume over HTTP (200s), closed loop", len(accepted_latencies), o.duration, accepted_latencies),
        *(
            [latency_row(f"consume over HTTP (200s), paced at {o.paced_rate:,.0f}/s", len(paced_ok), o.paced_duration, paced_ok)]
            if paced is not None
            else []
        ),
        latency_row("(a) EVALSHA of the CONSUME script", script.calls, script.seconds, script.latencies),
        latency_row("(b) aiokafka send_and_wait, acks=all", send.calls, send.seconds, send.latencies),
        latency_row("(c) script, then send", chain.calls, chain.seconds, chain.latencies),
        latency_row("(d) script, send, keeping call: the floor", settled.calls, settled.seconds, settled.latencies),
    ]
    tables = [
        Table(
            f"{NAME}: Kafka mode, {o.clients} clients ({o.processes} load process(es)) -> {o.apis} API process(es), "
            f"{o.tenants} tenants, {o.workers} Faust worker(s); baselines from {o.clients} asyncio tasks",
            ["what", "calls", "calls/s", "p50 ms", "p90 ms", "p99 ms"],
            rows,
        ),
        Table(
            "consume: answers by status in the measured window, and the share of the floor",
            ["statuses", "consumes/s / floor's calls/s", "/ (c)'s", "p99 / floor's p99"],
            [
                [
                    ", ".join(f"{k}: {v}" for k, v in load.statuses().items()),
                    figures["ratio"],
                    figures["ratio_of_chain"],
                    figures["p99_over_floor"],
                ]
            ],
        ),
        Table(
            f"CPU while consume ran: cores busy per role (machine: {machine()['nproc']} cores; stolen: by other "
            "virtual machines) and microseconds per accepted consume",
            ["", *cores, "total", STOLEN],
            [
                ["cores", *cores.values(), round(sum(cores.values()), 2), stolen],
                ["µs per consume", *per_consume.values(), round(sum(per_consume.values()), 1), ""],
            ],
        ),
    ]
    if refusals is not None:
        refused = refusals.latencies.get(429, [])
        accepted = refusals.latencies.get(200, [])
        figures["refusal_phase"] = {
            **exact,
            "decisions_per_s": (len(refused) + len(accepted)) / o.refusal_duration,
            "refused_p50_ms": percentile(refused, 50) * 1000,
            "refused_p99_ms": percentile(refused, 99) * 1000,
            "statuses": refusals.statuses(),
        }
        tables.append(
            Table(
                f"demand past a hard limit: one tenant, limit {o.refusal_limit:,} a day, consumes of 1, "
                f"{o.clients} clients for {o.refusal_duration:g} s",
                ["answers", "count", "per s", "p50 ms", "p90 ms", "p99 ms"],
                [
                    latency_row("accepted (200)", len(accepted), o.refusal_duration, accepted),
                    latency_row("refused (429)", len(refused), o.refusal_duration, refused),
                ],
            )
        )
        notes.append(
            f"limit {o.refusal_limit:,}: {exact['accepted']:,} accepted, the quota shows {exact['quota_used']} used: "
            + ("exact" if exact["exact"] else "NOT EXACT (demand may not have reached the limit)")
        )
    notes.append(
        f"load: {'bare HTTP/1.1 (ops/bench/raw_http.py)' if o.client == 'raw' else 'aiohttp'} keep-alive clients, closed loop, unique idempotency "
        f"keys, amounts 1..50; the baselines run before, from this process, while the API is idle; record {found['record_bytes']} B"
    )
    at_start = figures["redis_at_start"]
    notes.append(
        f"Redis at the start: {at_start['keys']:,} keys, {at_start['used_memory_bytes'] / 2**20:,.0f} MiB; AOF rewrites "
        f"(a fork, then every key written out) during the closed loop: {load.redis_rewrites}"
        + (f", the paced phase: {paced.redis_rewrites}" if paced is not None else "")
        + (
            " (keys left by earlier runs make each one longer: FLUSHALL the development Redis)"
            if at_start["keys"] > 100_000
            else ""
        )
        + f"; Kafka at the start: {figures['kafka_topics_at_start']} topics"
        + (
            " (a broker that served the test suite: `make clean` gives one like CI's)"
            if figures["kafka_topics_at_start"] > 100
            else ""
        )
    )
    if paced is not None:
        notes.append(
            f"paced: the same clients offer {o.paced_rate:,.0f} consumes/s together, each request due at a fixed time and "
            "its latency counted from then (a closed loop of N clients at R/s has a mean latency of N/R by Little's law: "
            "50 clients at 2,000/s average 25 ms whatever the server does, so a p99 target is judged at an offered rate); "
            "cores busy meanwhile: "
            + ", ".join(f"{role} {cores:.2f}" for role, cores in paced_cores.items())
            + "; niceness (OMNI_CPU_NICE): "
            + ", ".join(f"{name} {nice}" for name, nice in figures["niceness"].items())
            + "; "
            f"begun once the views held the closed loop's consumes ({figures['catch_up_seconds']:.1f} s after it)"
        )
        shape = figures["paced"]
        if "seconds_with_slow" in shape:
            notes.append(
                f"paced tail: {shape['seconds_with_slow']} of the phase's {len(shape['each_second_99th_percentile'])} seconds "
                f"held answers slower than {TARGET_P99_MS:.0f} ms, the worst second {shape['slow_share_in_worst_second']:.0%} "
                "of them; each second's p99 (ms): "
                + " ".join(f"{v:.0f}" for v in shape["each_second_99th_percentile"])
                + (
                    f"; the broker paused {pauses['count']} times ({pauses['total_ms']:.0f} ms in all, the longest "
                    f"{pauses['max_ms']:.0f} ms), and {shape['slow_share_near_broker_pause']:.0%} of the slow answers "
                    f"waited in one or in the {TARGET_P99_MS:.0f} ms after it"
                    if (pauses := shape["broker_pauses"])["count"]
                    else "; no pause of the broker's collector found in its GC log (.run/kafka/logs)"
                )
            )
        if steal := shape.get("steal"):
            notes.append(
                f"the hypervisor's steal: {steal['stolen_cores_in_slow_seconds']:.3f} cores at the mean in the "
                f"{steal['slow_seconds']} seconds whose p99 passed {TARGET_P99_MS:.0f} ms ({steal['slow_seconds_with_steal']} "
                f"of them with 0.05 cores or more), {steal['stolen_cores_in_other_seconds']:.3f} in the others; each "
                "second's: " + " ".join(f"{v:.2f}" for v in steal["each_second_stolen_cores"])
            )
        if inside := shape.get("api_side"):
            notes.append(
                f"the API's own time per consume in the paced phase (its api_call records: from its headers in to its answer), "
                f"{inside['count']:,} of them: p50 {inside['p50_ms']:.1f} ms, p99 {inside['p99_ms']:.1f} ms; each second's p99 "
                "(ms): " + " ".join(f"{v:.0f}" for v in inside["each_second_99th_percentile"])
            )
        if late := shape.get("load_generator"):
            notes.append(
                f"the load generator's own lateness: {late['idle_sends']:,} requests fell due to an idle client and left "
                f"p50 {late['late_p50_ms']:.1f} ms, p99 {late['late_p99_ms']:.1f} ms, at most {late['late_max_ms']:.0f} ms "
                f"late; {late['slow_only_by_lateness']} of the {late['slow_answers']} answers slower than "
                f"{TARGET_P99_MS:.0f} ms were slow only by it; p99 with it taken out {late['p99_less_lateness_ms']:.1f} ms "
                "(from the request leaving to its answer read; the headline counts from the due time)"
            )
        if paced.api_loop:
            notes.append(
                "the API's event loop (its main thread, as the scheduler counted it) in the paced phase: "
                f"running {paced.api_loop['running']:.0%}, waiting for a CPU {paced.api_loop['waiting_for_cpu']:.0%}, "
                f"idle {paced.api_loop['idle']:.0%}"
                + (
                    f"; in the closed loop: running {load.api_loop['running']:.0%}, waiting {load.api_loop['waiting_for_cpu']:.0%}"
                    if load.api_loop
                    else ""
                )
                + " (a loop that is seldom idle queues every request behind the ones before it)"
            )
    return Report(
        NAME,
        o,
        tables,
        figures,
        [
            Target(f"consumes/s, {o.clients} clients", ours, TARGET_RATE),
            Target(
                f"consume p99 ms at {o.paced_rate:,.0f}/s offered" if paced is not None else "consume p99 ms, closed loop",
                paced_p99 if paced is not None else p99,
                TARGET_P99_MS,
                higher_is_better=False,
            ),
        ],
        notes,
    )


if __name__ == "__main__":
    from ops.bench.run import main

    raise SystemExit(main(only=NAME))
