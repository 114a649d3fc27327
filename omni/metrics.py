"""Prometheus metrics shared by the API and the runners. Labels stay low-cardinality."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("omni_events_total", "Usage events offered to POST /v1/events", ["outcome"])
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
KEY_CACHE_TRUSTED = Gauge(
    "omni_key_cache_trusted",
    "1 while every API key change reaches this process's key cache; 0 while it is bypassed (its listener is down)",
)
REFUSED_BEFORE_AUTH = Counter(
    "omni_http_refused_before_auth_total",
    "Requests refused at the edge before any route ran (no valid key, oversized headers): counted, never stored",
    ["reason"],
)
CLIENT_DISCONNECTS = Counter(
    "omni_http_client_disconnects_total", "Requests whose client went away before its body was read in full"
)
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
QUOTA_REBUILDS = Counter("omni_quota_counter_rebuilds_total", "Times the quota counters were rebuilt from the views and the log")
