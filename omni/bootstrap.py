"""The composition root: the only place that builds infrastructure and wires it to the core."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from starlette.concurrency import run_in_threadpool

from commands.control_plane import ControlPlane, Principal
from commands.ingest import AdmissionPolicy
from commands.limits import Limits
from omni import failpoints, metrics
from omni.catalog_cache import CatalogCache
from omni.gdpr_jobs import GdprJobs
from omni.gdpr_retention import RetentionSweeper
from omni.key_cache import KeyCache, KeyChanges
from omni.key_lookups import KeyLookups
from omni.personal_data import PersonalData, generate_master_key, master_key_from
from omni.settings import Mode, Settings
from schemas.topics import Topics
from stores import data_keys, idempotency, schema, views
from stores import plans as plan_store
from stores import slos as slo_store
from stores.database import EVENT_STORE_AWAY, Database, PostgresDatabase, SqliteDatabase, StoreUnavailable
from stores.store_listener import StoreListener
from streams.embedded_quotas import EmbeddedQuotaLedger
from streams.log import EventLog, UsageSink
from streams.notices import NoticesRelay
from streams.outbox import OutboxRelay
from streams.projectors import CATALOG_APPLIED
from streams.quota_ledger import FactLedger, QuotaLedger
from streams.replay import Replayer
from streams.replay_jobs import ReplayJobs
from streams.runner import Runner, build_runner
from streams.webhooks import WebhookDeliveries

log = logging.getLogger(__name__)
T = TypeVar("T")

ADMIN = Principal(tenant_id=None, key_id="admin", is_admin=True)


def event_store_env(settings: Settings) -> dict[str, str]:
    """eventsourcing's persistence settings for the mode."""
    if settings.mode is Mode.EMBEDDED:
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(settings.data_dir / "eventstore.sqlite"),
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    url = urlparse(settings.database_url)
    return {
        # eventsourcing's PostgreSQL persistence, each operation's wait bounded (stores/event_store.py).
        "PERSISTENCE_MODULE": "stores.event_store:Factory",
        "OMNI_DATABASE_WAIT_SECONDS": str(settings.database_wait_seconds),
        "OMNI_DATABASE_STATEMENT_SECONDS": str(settings.database_statement_seconds),
        "POSTGRES_DBNAME": url.path.lstrip("/"),
        "POSTGRES_HOST": url.hostname or "localhost",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or ""),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_SCHEMA": settings.database_schema,
        "POSTGRES_POOL_SIZE": "5",
        "CREATE_TABLE": "true",
    }


def admin_key_path(settings: Settings) -> Path:
    return settings.data_dir / "admin_key"


def stored_admin_key(settings: Settings) -> str | None:
    """OMNI_ADMIN_KEY, or the key generated earlier in the data directory; None if there is neither."""
    if settings.admin_key:
        return settings.admin_key
    path = admin_key_path(settings)
    return path.read_text().strip() if path.exists() else None


def gdpr_master_key(settings: Settings) -> str | None:
    """OMNI_GDPR_MASTER_KEY; in embedded mode without it, one generated once into the data directory
    (readable by its owner only). Kafka mode has none unless configured (`omni serve` refuses to start)."""
    if settings.gdpr_master_key:
        return settings.gdpr_master_key
    if settings.mode is not Mode.EMBEDDED:
        return None
    path = settings.data_dir / "gdpr_master_key"
    if path.exists():
        return path.read_text().strip()
    key = generate_master_key()
    write_secret(path, key)
    return key


def admin_key(settings: Settings) -> str:
    """OMNI_ADMIN_KEY, or one generated once and kept in the data directory (readable by its owner only)."""
    existing = stored_admin_key(settings)
    if existing is not None:
        return existing
    key = new_admin_key()
    write_secret(admin_key_path(settings), key)
    return key


def new_admin_key() -> str:
    return "omni_admin_" + secrets.token_urlsafe(32)


def write_secret(path: Path, key: str) -> None:
    """A key into a new file of the data directory, readable by its owner only from the moment the
    file exists (written first and chmod-ed after, it stood readable by every local user meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # touch leaves an existing file's mode as it was
    path.write_text(key + "\n")


@dataclass
class Platform:
    settings: Settings
    topics: Topics
    control: ControlPlane
    log: EventLog
    sink: UsageSink
    db: Database
    relay: OutboxRelay
    runner: Runner
    policy: AdmissionPolicy
    admin_key_digest: bytes
    keys: KeyCache
    key_changes: KeyChanges
    catalog: CatalogCache  # what consume reads from the catalog views, kept while notices say it holds
    personal: PersonalData  # data classes and data keys: sealing at admission, opening for reads, erasure
    quotas: QuotaLedger | None = None  # where consume decides: the embedded log's file, or Redis
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))  # consume's time (tests set it)
    notices: NoticesRelay = field(init=False)
    replays: ReplayJobs = field(init=False)
    key_lookups: KeyLookups = field(init=False)  # the store reads for keys not verified yet, bounded

    gdpr_jobs: GdprJobs = field(init=False)
    retention: RetentionSweeper = field(init=False)
    webhooks: WebhookDeliveries | None = field(init=False)  # None without a master key to open their secrets

    def __post_init__(self) -> None:
        self.notices = NoticesRelay(self.control, self.db, self.relay.wake)
        self.replays = ReplayJobs(
            build_replayer(self.settings, self.db, self.log, None if self.quotas is None else self.quotas.views_swapped), self.db
        )
        self.gdpr_jobs = GdprJobs(self)
        self.retention = RetentionSweeper(self)
        master = self.personal.master
        self.webhooks = None if master is None else WebhookDeliveries(self.settings, self.control, self.db, master)
        self.key_lookups = KeyLookups(
            self.authenticate,
            threads=self.settings.auth_lookup_threads,
            waiting=self.settings.auth_lookups_waiting,
            generation=lambda: self.keys.generation,
        )

    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def is_admin(self, token: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self.admin_key_digest)

    def cached_principal(self, token: str) -> Principal | None:
        """Who `token` is, if that is known without reading the event store (the admin, or a cached key)."""
        if self.is_admin(token):
            return ADMIN
        return self.keys.get(token)

    async def verify(self, token: str) -> Principal | None:
        """Who `token` is: from memory when known, else by a bounded read of the event store
        (omni.key_lookups: raises LookupsBusy past its bound)."""
        return self.cached_principal(token) or await self.key_lookups.verify(token)

    def authenticate(self, token: str) -> Principal | None:
        """Who `token` is, reading the event store if needed (blocking: call it from a worker thread)."""
        if self.is_admin(token):
            return ADMIN
        generation = self.keys.generation
        principal = self.control.authenticate(token)
        if principal is not None:
            self.keys.put(token, principal, generation)
        return principal

    async def start(self, *, background: bool, watch_keys: bool = True) -> None:
        """Open the log and, with `watch_keys` (a process that authenticates requests), watch for key
        changes; with `background`, also run the relay (and the runner in embedded mode)."""
        await self.log.start()
        self._stop.clear()
        if watch_keys:
            await self._watch_keys()
        if isinstance(self.quotas, EmbeddedQuotaLedger):
            await self.quotas.start()  # its tables in the log's file
        if not background:
            return
        if isinstance(self.quotas, EmbeddedQuotaLedger):
            await self.quotas.ensure_built(self.settle, self.db, datetime.now(UTC))
        elif self.quotas is not None:
            await self.quotas.start()  # Redis's counters rebuilt now if missing, not on the first consume
        self._tasks.append(asyncio.create_task(self.relay.run(self._stop), name="outbox-relay"))
        self._tasks.append(asyncio.create_task(self.notices.run(self._stop), name="notices-relay"))
        self._tasks.append(asyncio.create_task(self.retention.run(self._stop), name="gdpr-retention"))
        self._tasks.append(asyncio.create_task(self.gdpr_jobs.keep_resuming(self._stop), name="gdpr-resume"))
        self.start_auto_close()
        self.start_stripe_sync()
        self.start_webhooks()
        if self.settings.mode is Mode.EMBEDDED:
            wake = getattr(self.log, "appended", None)
            self._tasks.append(asyncio.create_task(self.runner.run(self._stop, wake), name="runner"))

    def start_auto_close(self) -> None:
        """Close last month's billing period by itself once its grace has passed (unless turned off)."""
        if self.settings.billing_auto_close:
            from omni.billing_close import AutoClose

            self._tasks.append(asyncio.create_task(AutoClose(self).run(self._stop), name="billing-auto-close"))

    def start_stripe_sync(self) -> None:
        """Push finalized invoices to Stripe in the background, when OMNI_STRIPE_API_KEY is set (README, "Stripe")."""
        if self.settings.stripe_api_key:
            from streams.stripe_sync import from_settings

            sync = from_settings(self.settings, self.control, self.db, self.relay.wake)
            self._tasks.append(asyncio.create_task(sync.run(self._stop), name="stripe-sync"))

    def start_webhooks(self) -> None:
        """Deliver the notices to the webhook endpoints, in the background (README, "Webhooks"); one
        process delivers at a time (a PostgreSQL advisory lock in Kafka mode)."""
        if self.webhooks is None:
            log.warning("webhooks are not delivered by this process: it has no OMNI_GDPR_MASTER_KEY to open their secrets")
            return
        self._tasks.append(asyncio.create_task(self.webhooks.run(self._stop), name="webhooks"))

    async def run_command(self, action: Callable[..., T], *args: Any) -> T:
        """Run `action` in a worker thread. Then what the command stored (its events, or the audit entry
        of its refusal) takes effect: key changes reach this process's key cache before the answer, and
        the relay publishes now, not after an idle pause. Last, the answer waits (a bounded time) until
        the views hold what the command changed, so the caller's next read sees it."""
        control = self.control

        def act() -> tuple[T, int | None]:
            control.take_saved_position()  # nothing left over from an earlier command on this thread
            return action(*args), control.take_saved_position()

        try:
            result, position = await run_in_threadpool(act)
        except (*EVENT_STORE_AWAY, StoreUnavailable):
            # Nothing this process must catch up on now, and each catch-up would wait for the store
            # in turn (the answer's 503 came minutes late): what the command may have stored before
            # the store went away reaches the caches through the key listener, which catches up on
            # everything when it listens again.
            self.relay.wake()
            raise
        except BaseException:
            await self.after_command()
            raise
        await self.after_command()
        if position is not None:
            await self.views_reach(position)
        return result

    async def after_command(self) -> None:
        """What a command stored takes effect in this process at once: key changes reach the cache,
        and the relay publishes (rather than after an idle pause)."""
        self.relay.wake()
        self.catalog.heard()
        try:
            await asyncio.to_thread(self.key_changes.catch_up)
        except Exception:
            log.warning("could not read the key changes after a command; authenticating from the store", exc_info=True)
        try:
            await asyncio.to_thread(self.personal.catch_up)
        except Exception:
            log.warning("could not read the GDPR changes after a command; data keys are read from the store", exc_info=True)
        try:
            await asyncio.to_thread(self.catalog.catch_up)
        except Exception:
            log.warning("could not read the catalog changes after a command; consume reads the views", exc_info=True)

    async def views_reach(self, position: int) -> bool:
        """Wait until the catalog views hold every control event up to event-store `position`, at most
        `read_your_writes_seconds`. False (and counted) when they did not in time: the command still
        stands, its caller may just not read it back yet."""
        deadline = time.monotonic() + self.settings.read_your_writes_seconds
        delay = 0.002
        while True:
            if await asyncio.to_thread(self._catalog_applied) >= position:
                return True
            if time.monotonic() + delay > deadline:
                if self.settings.read_your_writes_seconds:
                    log.warning("the views did not reach store position %d in time; answering without them", position)
                    metrics.READ_YOUR_WRITES_MISSED.inc()
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _catalog_applied(self) -> int:
        with self.db.transaction() as tx:
            return views.relay_position(tx, CATALOG_APPLIED)

    async def _watch_keys(self) -> None:
        metrics.KEY_CACHE_TRUSTED.set(self.keys.trusted)  # this process authenticates: its cache's state is shown
        if self.settings.mode is Mode.EMBEDDED:
            # The only process on this data: every key change is one of its own commands.
            await asyncio.to_thread(self.key_changes.start_watching)
            await asyncio.to_thread(self.personal.start_watching)
        else:
            self._tasks.append(asyncio.create_task(self._key_listener().run(self._stop), name="key-listener"))

    def _key_listener(self) -> StoreListener:
        """Kafka mode: other API processes' commands reach this one's key cache through PostgreSQL."""

        async def changed() -> None:
            self.catalog.heard()  # before anything else runs: no consume reads a stale quota from here
            await asyncio.to_thread(self.key_changes.catch_up)
            await asyncio.to_thread(self.personal.catch_up)
            await asyncio.to_thread(self.catalog.catch_up)

        async def listening() -> None:
            await asyncio.to_thread(self.key_changes.start_watching)
            await asyncio.to_thread(self.personal.start_watching)
            await asyncio.to_thread(lambda: self.catalog.start_watching(self._catalog_applied()))

        async def lost() -> None:
            self.key_changes.stop_watching()
            self.personal.stop_watching()
            self.catalog.stop_watching()

        channel: str = self.control.recorder.channel_name  # type: ignore[attr-defined]
        return StoreListener(self.settings.database_url, channel, listening=listening, changed=changed, lost=lost)

    async def stop(self) -> None:
        with contextlib.suppress(TimeoutError):  # before the relay and runner stop: a job's steps wait for the views
            await asyncio.wait_for(self.gdpr_jobs.wait(), timeout=10)
        self._stop.set()
        await self.replays.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        self._tasks.clear()
        self.gdpr_jobs.claims.close()
        if self.quotas is not None:
            await self.quotas.close()
        await self.log.close()
        if self.sink is not self.log:
            await self.sink.close()
        if self.personal.keys_db is not self.db:
            self.personal.keys_db.close()
        self.key_lookups.close()
        self.db.close()
        self.control.close()

    async def settle(self) -> None:
        """Relay and fold everything stored so far, and record the notices found (tests, `omni replay`)."""
        while await self.relay.relay_once():
            pass
        await self.runner.drain()
        while await asyncio.to_thread(self.notices.record_once):
            while await self.relay.relay_once():
                pass


def build(settings: Settings) -> Platform:
    failpoints.arm_from(os.environ)  # tests' crash points; nothing is armed unless OMNI_FAILPOINTS says so
    topics = Topics(prefix=settings.topic_prefix, usage_partitions=settings.usage_partitions)
    db: Database
    quotas: QuotaLedger
    facts: FactLedger
    if settings.mode is Mode.EMBEDDED:
        from streams.embedded_log import EmbeddedLog

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        metrics.DATA_DIR_SPACE.watch(settings.data_dir)
        embedded = EmbeddedLog(settings.data_dir / "log.sqlite", topics)
        log_: EventLog = embedded
        sink: UsageSink = embedded
        quotas = facts = EmbeddedQuotaLedger(embedded, keep=settings.quota_answer_keep)
        db = SqliteDatabase(settings.data_dir / "views.sqlite")
    else:
        from streams.kafka_log import KafkaLog
        from streams.redis_dedupe import RedisDedupedSink
        from streams.redis_quotas import RedisFactLedger, RedisQuotaLedger

        kafka = KafkaLog(
            settings.kafka_bootstrap_servers,
            topics,
            produce_timeout=settings.produce_timeout_seconds,
            linger_ms=settings.kafka_linger_ms,
        )
        log_ = kafka
        sink = RedisDedupedSink(
            kafka, settings.redis_url, topics, claim_ttl=settings.dedupe_claim_seconds, keep_for=settings.redis_dedupe_seconds
        )
        db = PostgresDatabase(
            settings.database_url,
            schema=settings.database_schema,
            wait_seconds=settings.database_wait_seconds,
            statement_seconds=settings.database_statement_seconds,
        )
        metrics.POOLS.watch_postgres(settings.database_schema, db.pool)
        quotas = RedisQuotaLedger(
            settings.redis_url,
            topics,
            kafka,
            db,
            grace=settings.produce_timeout_seconds,
            keep_seconds=int(settings.quota_answer_keep.total_seconds()),
            group_spacing=settings.consume_group_spacing_ms / 1000,
        )
        facts = RedisFactLedger(settings.redis_url, topics)
    db.migrate(schema.SCHEMA)
    control = ControlPlane(env=event_store_env(settings))
    # The data keys live in the event store's database: its own file in embedded mode, its schema in PostgreSQL.
    # Synced at each commit: an event sealed with a new key is on the log (synced) before its 202.
    keys_db = (
        SqliteDatabase(settings.data_dir / "eventstore.sqlite", durable=True, secure_delete=True)
        if settings.mode is Mode.EMBEDDED
        else db
    )
    data_keys.migrate(keys_db)
    idempotency.migrate(keys_db)  # POST requests' Idempotency-Key (api/idempotency.py), beside the data keys
    personal = PersonalData(master_key_from(gdpr_master_key(settings)), keys_db, control.recorder, control.mapper.to_domain_event)
    control.seal_actor = personal.seal_actor  # the audit trail's IP addresses and user agents
    control.limits = Limits(
        slos_per_owner=settings.max_slos_per_tenant,
        slo_revisions_per_hour=settings.slo_revisions_per_hour,
        keys_per_tenant=settings.max_keys_per_tenant,
        webhook_endpoints_per_owner=settings.max_webhook_endpoints,
    )
    control.secret_box = personal.master  # webhook endpoints' signing secrets
    control.views_slo_names = functools.partial(_slo_names, db)
    control.views_active_keys = functools.partial(_active_keys, db)
    control.views_meter_users = functools.partial(_meter_users, db)
    keys = KeyCache()  # trusted once `start` watches the key changes
    return Platform(
        settings=settings,
        topics=topics,
        control=control,
        log=log_,
        sink=sink,
        db=db,
        relay=OutboxRelay(control, log_, db, topics),
        runner=build_runner(settings, db, log_, facts),
        policy=AdmissionPolicy(
            window=settings.acceptance_window,
            future=settings.future_tolerance,
            max_depth=settings.max_json_depth,
            max_event_bytes=settings.max_event_bytes,
        ),
        admin_key_digest=hashlib.sha256(admin_key(settings).encode()).digest(),
        keys=keys,
        key_changes=KeyChanges(control.recorder, keys),
        catalog=CatalogCache(control.recorder),
        personal=personal,
        quotas=quotas,
    )


def _slo_names(db: Database, owner: str) -> list[str]:
    """The owner's SLOs as the views hold them (ControlPlane.views_slo_names)."""
    with db.transaction() as tx:
        return slo_store.names_of(tx, owner)


def _active_keys(db: Database, tenant_id: str) -> list[str]:
    """The tenant's keys not revoked, as the views hold them (ControlPlane.views_active_keys)."""
    with db.transaction() as tx:
        return views.active_keys_of(tx, tenant_id)


def _meter_users(db: Database, meter: str) -> list[str]:
    """Who names the meter as the views hold it (ControlPlane.views_meter_users)."""
    with db.transaction() as tx:
        return plan_store.meter_users(tx, meter)


def build_replayer(
    settings: Settings, db: Database, log_: EventLog, on_meters_swapped: Callable[[], Awaitable[None]] | None = None
) -> Replayer:
    """Replays (streams.replay) of the live views `db` from `log_`, folded as `build_runner` folds;
    `on_meters_swapped`: the quota counters told of a swap of the meters' views (the platform's own)."""
    from omni.audit_keys import signing_key

    return Replayer(
        log=log_,
        live=db,
        folder=settings.data_dir if settings.mode is Mode.EMBEDDED else None,
        audit_key=lambda: signing_key(settings, db),
        keep_seen=settings.acceptance_window + settings.future_tolerance,
        batch_size=settings.runner_batch_size,
        audit_every=settings.audit_checkpoint_every,
        on_meters_swapped=on_meters_swapped,
    )


def open_log_and_views(settings: Settings) -> tuple[EventLog, Database]:
    """The log and the live views alone, as `build` opens them (for `omni replay`, beside a running platform)."""
    topics = Topics(prefix=settings.topic_prefix, usage_partitions=settings.usage_partitions)
    db: Database
    log_: EventLog
    if settings.mode is Mode.EMBEDDED:
        from streams.embedded_log import EmbeddedLog

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        log_ = EmbeddedLog(settings.data_dir / "log.sqlite", topics)
        db = SqliteDatabase(settings.data_dir / "views.sqlite")
    else:
        from streams.kafka_log import KafkaLog

        log_ = KafkaLog(
            settings.kafka_bootstrap_servers,
            topics,
            produce_timeout=settings.produce_timeout_seconds,
            linger_ms=settings.kafka_linger_ms,
        )
        db = PostgresDatabase(settings.database_url, schema=settings.database_schema)
    db.migrate(schema.SCHEMA)
    return log_, db
