"""Prometheus metrics shared by the API and the runners. Labels stay low-cardinality."""

from __future__ import annotations

import contextlib
import functools
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

M = TypeVar("M", Counter, Gauge, Histogram)


@functools.lru_cache(maxsize=4096)
def labelled(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, kept: prometheus_client finds a child under a lock and through its
    label checks on every call, a few microseconds each on the hottest paths (several per consume)."""
    return metric.labels(*values)


EVENTS = Counter("omni_events_total", "Usage events offered to POST /v1/events", ["outcome"])
OUTBOX_SET_ASIDE = Counter(
    "omni_outbox_set_aside_total", "Stored control events the outbox relay could not encode for the log, and set aside"
)
INGEST_RATE_LIMITED = Counter(
    "omni_ingest_rate_limited_total", "POST /v1/events requests refused for their tenant's rate (OMNI_TENANT_EVENTS_PER_SECOND)"
)
HTTP_REQUESTS = Counter("omni_http_requests_total", "HTTP requests served", ["route", "method", "status"])
HTTP_LATENCY = Histogram(
    "omni_http_request_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PROJECTED = Counter("omni_projected_records_total", "Log records applied to views", ["projector"])
LOG_UNAVAILABLE = Counter("omni_log_unavailable_total", "Requests answered 503 because the log was down")
DEAD_LETTERS = Counter("omni_dead_letters_total", "Log records no projector could read, kept aside with the reason", ["consumer"])
LOG_HOLES = Counter("omni_log_holes_total", "Ranges of offsets missing from a partition")
FOLD_SECONDS = Histogram(
    "omni_fold_batch_seconds",
    "Time to apply one batch of log records to the views, retries included",
    ["projector"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERIES_HELD = Counter(
    "omni_worker_deliveries_held_total",
    "Times the worker's fetch waited for its agents' full queues to drain: the fold is behind the log",
)
VIEWS_LAG = Gauge(
    "omni_views_lag_records",
    "Records on the log the views do not hold yet, per partition this process folds",
    ["projector", "partition"],
)
SEALED_EVENTS = Counter("omni_gdpr_sealed_events_total", "Events whose personal values admission sealed (README, GDPR)")
DATA_KEY_READS = Counter(
    "omni_gdpr_data_key_reads_total", "Admissions that read (or made) data keys in the key store: persons not in memory"
)
KEY_CACHE = Counter(
    "omni_key_cache_total", "API key lookups answered from memory (hit) or by the event store (miss)", ["outcome"]
)
WEBHOOK_ATTEMPTS = Counter(
    "omni_webhook_attempts_total",
    "Webhook delivery attempts (README, Webhooks): delivered (2xx), retrying (failed, tried again later), "
    "failed (the last of the schedule failed: given up)",
    ["outcome"],
)
for _outcome in ("delivered", "retrying", "failed"):
    WEBHOOK_ATTEMPTS.labels(_outcome)
REFUSED_BEFORE_AUTH = Counter(
    "omni_http_refused_before_auth_total",
    "Requests refused at the edge before any route ran (no valid key, oversized headers): counted, never stored",
    ["reason"],
)
CLIENT_DISCONNECTS = Counter(
    "omni_http_client_disconnects_total", "Requests whose client went away before its body was read in full"
)
QUERIES_REFUSED = Counter(
    "omni_meter_queries_refused_total",
    "Heavy reads (meter queries, reads as of an instant) answered 429 too-many-queries (api/tenant_reads.py)",
)
METER_WATCHES = Gauge("omni_meter_watches", "Live meter watches open in this API process (GET /v1/meters/{slug}/watch)")
READY = Gauge(
    "omni_ready",
    "1 while this process is ready (its GET /readyz answers 200): omni worker and omni relay",
    ["process"],
)
READ_YOUR_WRITES_MISSED = Counter(
    "omni_read_your_writes_missed_total",
    "Commands answered before the views held their changes (OMNI_READ_YOUR_WRITES_SECONDS ran out)",
)
QUOTA_DECISIONS = Counter(
    "omni_quota_decisions_total", "Consume calls decided (a kept answer given again counts as replayed)", ["outcome"]
)
QUOTA_REBUILDS = Counter("omni_quota_ledger_rebuilds_total", "Times the quota counters were rebuilt from the views and the log")

PRODUCED = Counter("omni_log_records_produced_total", "Records appended to the log, per topic", ["topic"])
VIEW_QUERY = Histogram(
    "omni_view_query_seconds",
    "Time to read one answer from the views (the query routes' database work)",
    ["view"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SLO_EVENTS = Counter(
    "omni_slo_events_total",
    "Events an SLO counted as they were folded (outcome good or bad): the rates its Prometheus rules read",
    ["owner", "slo", "outcome"],
)
SLO_OBJECTIVE = Gauge("omni_slo_objective_ratio", "An SLO's objective, as a ratio (0.999)", ["owner", "slo", "window"])
SLO_ALERT_FIRING = Gauge(
    "omni_slo_alert_firing",
    "1 while an SLO's alert fires as the fold evaluates it by event time (omni.slo.alert_fired / _resolved)",
    ["owner", "slo", "alert"],
)


def seed_http_requests() -> None:
    """The API's first 5xx of POST /v1/events exported at 0 from the start, so `increase()` sees the
    first failure of ingest. Called by the API alone: a worker or a relay serves no request."""
    for status in ("500", "503"):
        HTTP_REQUESTS.labels("/v1/events", "POST", status)


class KeyCacheTrust(Collector):
    """omni_key_cache_trusted: 1 while every API key change reaches this process's key cache, 0 while
    it is bypassed. No sample until an API process says which (`set`): a process that
    authenticates no one (omni worker, omni relay) has no key cache to trust, and a 0 from it made
    `min(omni_key_cache_trusted)` read as a bypassed cache everywhere."""

    def __init__(self) -> None:
        self._trusted: bool | None = None

    def set(self, trusted: bool) -> None:
        self._trusted = trusted

    def collect(self) -> Iterator[Metric]:
        trusted = GaugeMetricFamily(
            "omni_key_cache_trusted",
            "1 while every API key change reaches this process's key cache; 0 while it is bypassed (its listener is down)",
        )
        if self._trusted is not None:
            trusted.add_metric([], int(self._trusted))
        yield trusted


KEY_CACHE_TRUSTED = KeyCacheTrust()
REGISTRY.register(KEY_CACHE_TRUSTED)


class Freshness(Collector):
    """How far behind the log the views are, in time, per projector and partition:
    omni_views_lag_seconds (now less the recorded time of the newest record folded, while records
    are waiting; 0 when none are) and omni_views_event_time_seconds (the newest event time folded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folded: dict[tuple[str, str], tuple[float, float]] = {}  # recorded, event time (epoch)
        self._waiting: dict[tuple[str, str], int] = {}

    def folded(self, projector: str, partition: int, recorded: float, event: float) -> None:
        with self._lock:
            key = (projector, str(partition))
            known = self._folded.get(key, (0.0, 0.0))
            self._folded[key] = (max(known[0], recorded), max(known[1], event))

    def waiting(self, projector: str, partition: int, records: int) -> None:
        with self._lock:
            self._waiting[(projector, str(partition))] = records

    def forget(self, projector: str, partition: int) -> None:
        with self._lock:
            self._waiting.pop((projector, str(partition)), None)
            self._folded.pop((projector, str(partition)), None)

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        lag = GaugeMetricFamily(
            "omni_views_lag_seconds",
            "Seconds the views are behind the log: now less the recorded time of the newest record folded, "
            "while records wait; 0 when none wait",
            labels=["projector", "partition"],
        )
        event = GaugeMetricFamily(
            "omni_views_event_time_seconds",
            "The newest event time folded into the views (Unix seconds)",
            labels=["projector", "partition"],
        )
        with self._lock:
            keys = sorted(set(self._folded) | set(self._waiting))
            for key in keys:
                recorded, newest = self._folded.get(key, (0.0, 0.0))
                if not self._waiting.get(key):
                    lag.add_metric(list(key), 0.0)
                elif recorded:
                    lag.add_metric(list(key), max(0.0, now - recorded))
                # (records waiting and none folded by this process yet: unknown, so no sample)
                if newest:
                    event.add_metric(list(key), newest)
        yield lag
        yield event


FRESHNESS = Freshness()
REGISTRY.register(FRESHNESS)


class DataDirSpace(Collector):
    """omni_data_dir_free_bytes: the room left on the file system of embedded mode's data directory
    (what a process that is not root may still write), read at each scrape. No sample in Kafka mode,
    which keeps nothing on local disk (`watch` is never called)."""

    def __init__(self) -> None:
        self._path: Path | None = None

    def watch(self, path: Path) -> None:
        self._path = path

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily(
            "omni_data_dir_free_bytes",
            "Bytes still free on the file system of embedded mode's data directory (OMNI_DATA_DIR)",
        )
        if self._path is not None:
            with contextlib.suppress(OSError):  # the directory gone: no sample, rather than a failed scrape
                free.add_metric([], shutil.disk_usage(self._path).free)
        yield free


DATA_DIR_SPACE = DataDirSpace()
REGISTRY.register(DATA_DIR_SPACE)


class Pools(Collector):
    """The PostgreSQL connection pools (psycopg_pool) and Redis clients of this process, read at scrape."""

    def __init__(self) -> None:
        self._postgres: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._redis: weakref.WeakSet[Any] = weakref.WeakSet()

    def watch_postgres(self, name: str, pool: Any) -> None:
        self._postgres[name] = pool

    def watch_redis(self, pool: Any) -> None:
        self._redis.add(pool)

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("omni_db_pool_connections", "PostgreSQL pool connections, by state", labels=["pool", "state"])
        most = GaugeMetricFamily("omni_db_pool_max_connections", "PostgreSQL pool size limit", labels=["pool"])
        waiting = GaugeMetricFamily(
            "omni_db_pool_requests_waiting", "Transactions waiting for a pooled connection now", labels=["pool"]
        )
        requests = CounterMetricFamily(
            "omni_db_pool_requests", "Connections asked of the pool (queued: had to wait)", labels=["pool", "outcome"]
        )
        for name, pool in sorted(self._postgres.items()):
            stats = pool.get_stats()
            in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
            size.add_metric([name, "in_use"], in_use)
            size.add_metric([name, "idle"], stats.get("pool_available", 0))
            most.add_metric([name], stats.get("pool_max", 0))
            waiting.add_metric([name], stats.get("requests_waiting", 0))
            requests.add_metric([name, "served"], stats.get("requests_num", 0))
            requests.add_metric([name, "queued"], stats.get("requests_queued", 0))
            requests.add_metric([name, "failed"], stats.get("requests_errors", 0))
        yield from (size, most, waiting, requests)
        clients = GaugeMetricFamily("omni_redis_pool_connections", "Redis client connections, by state", labels=["state"])
        watched = list(self._redis)
        if watched:  # a process without Redis (embedded mode, the relay) shows none, not an idle pool
            in_use = sum(len(getattr(pool, "_in_use_connections", ())) for pool in watched)
            idle = sum(len(getattr(pool, "_available_connections", ())) for pool in watched)
            clients.add_metric(["in_use"], in_use)
            clients.add_metric(["idle"], idle)
        yield clients


POOLS = Pools()
REGISTRY.register(POOLS)
