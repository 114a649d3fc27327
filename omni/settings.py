"""Configuration from the environment (pydantic-settings). Every field is documented in README.md."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Mode(StrEnum):
    EMBEDDED = "embedded"
    KAFKA = "kafka"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNI_", extra="ignore", populate_by_name=True)

    mode: Mode = Mode.EMBEDDED
    data_dir: Path = Path(".omni-data")
    # Embedded mode: GET /readyz answers 503 (check `disk`) while the data directory's file system
    # has less room than this, in MiB (0: not checked). Ingest and commands refuse with 503 once it is
    # full; readiness says so first, so a load balancer or an operator hears it before the clients.
    min_free_disk_mb: int = Field(default=64, ge=0)
    admin_key: str | None = None
    topic_prefix: str = Field(default="omni", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
    usage_partitions: int = Field(default=4, ge=1, le=256)
    acceptance_window_seconds: int = Field(default=7 * 86400, ge=60)
    future_tolerance_seconds: int = Field(default=300, ge=0)
    max_batch_events: int = Field(default=1000, ge=1)
    # Events one tenant may send to one API process a second (POST /v1/events; api/ingest_rates.py),
    # in bursts of up to a second's worth (at least a batch): past it, 429 with Retry-After. So one
    # tenant's flood cannot hold every other tenant's usage back in the shared log and folds. 0: no limit.
    tenant_events_per_second: float = Field(default=10_000, ge=0)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    # One usage event: how deep its `data` or an extension attribute may nest (orjson encodes 254
    # levels in all), and how large it may be as sent and as stored (Kafka's default limits on a
    # record, message.max.bytes and the producer's max_request_size, are 1 MiB with its overhead).
    max_json_depth: int = Field(default=32, ge=1, le=200)
    max_event_bytes: int = Field(default=1_000_000, ge=1024, le=1_000_000)
    # Stored buckets (minute, hour or day) one meter query may combine: its time and memory grow with
    # them (50,000 took 1 s and 300 MB at the peak, in embedded mode), and it answers no more rows.
    max_query_buckets: int = Field(default=50_000, ge=1)
    # Meter queries (watches' answers among them) one tenant runs at once in one API process, and how
    # many more may wait their turn, for how long (api/tenant_reads.py): one tenant's heavy queries
    # took every views connection, and other tenants' requests were answered 503.
    max_queries_per_tenant: int = Field(default=2, ge=1, le=1000)
    max_queries_waiting_per_tenant: int = Field(default=32, ge=0, le=100_000)
    query_wait_seconds: float = Field(default=10.0, gt=0, le=600)
    # Live meter watches (GET /v1/meters/{slug}/watch; api/meter_watch.py), per API process: how many
    # a tenant may hold open and how many in all; how often the views' positions are read while any
    # is open (how soon a change shows); how long one stays open before its client reconnects.
    max_watches_per_tenant: int = Field(default=5, ge=1, le=1000)
    max_watches: int = Field(default=500, ge=1, le=100_000)
    watch_poll_ms: int = Field(default=250, ge=10, le=10_000)
    watch_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # What one owner may hold in the control plane (README, "Security"). Every new SLO, and every
    # revision, is folded afresh from the whole shared usage log (streams/slos.py): so an owner (a
    # tenant, or the platform's admin) defines at most max_slos_per_tenant of them, and each may be
    # revised at most slo_revisions_per_hour times in any hour. A tenant holds at most
    # max_keys_per_tenant API keys not revoked.
    max_slos_per_tenant: int = Field(default=50, ge=1, le=10_000)
    slo_revisions_per_hour: int = Field(default=10, ge=1, le=3600)
    max_keys_per_tenant: int = Field(default=100, ge=1, le=100_000)
    # Webhooks (README, Webhooks): an owner's endpoints at most; private, loopback and link-local
    # addresses and http allowed (development and tests only); each attempt's time limit; the pauses
    # after each failed attempt (seconds, comma-separated; spent: the delivery is given up); how many
    # endpoints are sent to at once (one delivery at a time each, in order).
    max_webhook_endpoints: int = Field(default=10, ge=1, le=1000)
    webhooks_allow_private: bool = False
    webhooks_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    webhooks_retry_schedule: str = Field(default="5,300,1800,7200,18000,36000", pattern=r"^[0-9.,\s]*$")
    webhooks_concurrency: int = Field(default=16, ge=1, le=1000)
    # How long a settled delivery (delivered, or given up) is kept, with its attempts, for the
    # deliveries list; a deleted endpoint's are deleted at once.
    webhooks_keep_days: int = Field(default=30, ge=1, le=3650)
    runner_batch_size: int = Field(default=5000, ge=1)
    fold_linger_seconds: float = Field(default=0.1, ge=0, le=10)
    produce_timeout_seconds: float = Field(default=10.0, gt=0)
    # How long an appended record may wait for others to share its produce batch (Kafka's linger.ms):
    # 0 sends at once, and records that come while a request is out batch anyway (streams/kafka_log.py).
    kafka_linger_ms: int = Field(default=0, ge=0, le=1000)
    # The least time between two of consume's calls to Redis (streams.group_call): consumes that come
    # meanwhile share the next call, and then its append to Kafka. Less CPU per consume at a steady
    # rate for a longer wait (README, "Performance"); 0: every call as soon as the last is answered.
    consume_group_spacing_ms: float = Field(default=0.0, ge=0, le=50)
    meter_api_calls: bool = True
    # A command's answer waits at most this long for the views to hold its changes (read-your-writes).
    read_your_writes_seconds: float = Field(default=5.0, ge=0, le=60)
    # Billing (README, "Invoices"): a month closes by itself this long after it ends; a close first
    # waits at most billing_catch_up_seconds for the meter views to fold what the log holds.
    billing_auto_close: bool = True
    billing_close_grace_seconds: int = Field(default=86400, ge=0)
    billing_catch_up_seconds: float = Field(default=30.0, gt=0, le=600)
    invoice_seller: str = Field(default="Omni", max_length=500)  # the "From" of printable invoices
    # Stripe (README, "Stripe"): finalized invoices are pushed when a key is set (None: off); the
    # base address is Stripe's own unless given (tests: stripe-mock); webhooks verify with the secret.
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: str | None = None
    # The audit trail (README, "Audit trail"): the Ed25519 key that signs checkpoints (PEM, or a file
    # holding it; None: generated once), and how many entries of a chain each periodic checkpoint closes.
    audit_signing_key: str | None = Field(default=None, repr=False)
    audit_checkpoint_every: int = Field(default=100, ge=1, le=1_000_000)
    # GDPR (README, "GDPR"): the master key wrapping every data subject's key, 32 bytes in base64.
    # Embedded mode generates one into the data directory; `omni serve` in Kafka mode refuses to start without it.
    gdpr_master_key: str | None = Field(default=None, repr=False)
    # The HTTP edge (api/edge.py, api/server.py): what one request may cost before it is refused.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)  # names and values of all headers, together
    header_timeout_seconds: float = Field(default=10.0, gt=0)  # from a request's first byte to its last header
    body_timeout_seconds: float = Field(default=30.0, gt=0)  # the longest wait for the next piece of a body
    # The reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips: addresses or networks, comma-separated, `*` for any); unset: none, the
    # client's address is the connection's (the audit trail records it as the actor's IP).
    forwarded_allow_ips: str | None = None
    # Consume's common case answered by the HTTP protocol itself, below ASGI (api/consume_path.py);
    # false: through the ASGI layers like every other route.
    consume_at_connection: bool = True
    # Keys not verified yet are read from the event store on threads of their own (omni/key_lookups.py),
    # at most this many reads waiting at once (past that: 503 with Retry-After).
    auth_lookup_threads: int = Field(default=4, ge=1, le=64)
    auth_lookups_waiting: int = Field(default=256, ge=1)
    # GET /metrics on the API: off, open (no token), or only with `Authorization: Bearer <token>`.
    api_metrics: bool = True
    metrics_token: str | None = None
    # `omni worker` serves its Prometheus metrics on this port (0: not at all). One port per worker:
    # several workers on one host (one per core) each need their own.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    # `omni relay` serves its metrics and readiness on this port (0: not at all).
    relay_metrics_port: int = Field(default=0, ge=0, le=65535)
    # The address `omni worker` and `omni relay` serve /metrics and /readyz on (0.0.0.0: every interface).
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    # The CPU niceness this process gives itself as it starts (`omni serve`, `omni worker`, `omni
    # relay`; omni/runtime.py), -20 (first) to 19 (last); None: as it was started. Set per process:
    # on a host that runs the API beside the workers, the API first and the workers last keep
    # consume's latency from queueing behind folds (README, "Performance"). Below the niceness it
    # was started with needs CAP_SYS_NICE; without it the process says so and runs as started.
    cpu_nice: int | None = Field(default=None, ge=-20, le=19)
    # The cyclic garbage collector of `omni serve` and `omni worker` (omni/runtime.py): its youngest
    # generation runs every this many net allocations (CPython: 700); 0 keeps CPython's settings.
    gc_gen0_threshold: int = Field(default=100_000, ge=0)
    # Kafka mode: the usual names, no prefix, as every Kafka/PostgreSQL/Redis tool reads them.
    kafka_bootstrap_servers: str = Field(default="localhost:19092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    database_url: str = Field(default="postgresql://omni:omni@127.0.0.1:15432/omni", validation_alias="DATABASE_URL")
    # Kafka mode: how long a request waits to reach PostgreSQL (the event store or the views) before
    # 503: for a connection from a pool, and retrying at once one that broke under it (README,
    # "Configuration"). eventsourcing's own retries took about 50 s while PostgreSQL was away.
    database_wait_seconds: float = Field(default=3.0, gt=0, le=60)
    # Kafka mode: how long one PostgreSQL statement of the API's, the worker's or the relay's may
    # take. PostgreSQL cancels one that runs longer (its statement_timeout), and a server that leaves
    # a round trip unanswered a second past it (SIGSTOP, a frozen host) has the connection cut: 503,
    # rather than a request held until its client gives up. Migrations and a replay's swap are exempt.
    database_statement_seconds: float = Field(default=15.0, gt=0, le=3600)
    database_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    redis_url: str = Field(default="redis://127.0.0.1:16379/0", validation_alias="REDIS_URL")
    # Kafka mode: how long Redis keeps each accepted event's de-duplication key at most (None: the
    # whole acceptance window). The usage projector's own record always lasts the whole window.
    redis_dedupe_seconds: int | None = Field(default=None, ge=60)
    # Kafka mode: how long an event's claim in Redis holds its id while its append is in flight. A
    # process killed between claim and append leaves the claim; retries get 503 until it lapses. It
    # always outlives the append it protects (produce_timeout_seconds + 1 at least).
    dedupe_claim_seconds: float = Field(default=30.0, ge=1, le=600)
    # How long a consume's answer is kept for retries with its idempotency key (both modes): Redis
    # holds one key per consume for that long in Kafka mode. At most the acceptance window.
    quota_answer_seconds: int = Field(default=86_400, ge=60)

    @field_validator("webhooks_retry_schedule")
    @classmethod
    def _schedule(cls, text: str) -> str:
        from projections.webhooks import parse_schedule

        parse_schedule(text)  # a ValueError names what is wrong
        return text

    @property
    def webhooks_retries(self) -> tuple[float, ...]:
        from projections.webhooks import parse_schedule

        return parse_schedule(self.webhooks_retry_schedule)

    @property
    def acceptance_window(self) -> timedelta:
        return timedelta(seconds=self.acceptance_window_seconds)

    @property
    def quota_answer_keep(self) -> timedelta:
        """How long a consume's answer is kept: never past the acceptance window, so a retry decided
        again once its answer has lapsed is still one the meters count once (they remember its id
        that long)."""
        return timedelta(seconds=min(self.quota_answer_seconds, self.acceptance_window_seconds))

    @property
    def future_tolerance(self) -> timedelta:
        return timedelta(seconds=self.future_tolerance_seconds)
