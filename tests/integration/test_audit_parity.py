"""Runner parity for the audit chains: the same audit records (several tenants, `_platform`, and
records the relay republished) through the embedded runner (SQLite) and through the Faust worker
(Kafka and PostgreSQL), with one signing key, give byte-identical entries, heads and checkpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from commands.control_plane import PLATFORM, CommandContext, audit_entry
from omni.audit_keys import private_pem
from schemas.envelope import encode
from schemas.topics import Topics
from stores.database import Database, PostgresDatabase, SqliteDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA
from streams.embedded_log import EmbeddedLog
from streams.kafka_log import KafkaLog
from streams.log import Outgoing
from streams.outbox import to_envelope
from streams.projectors import AUDIT, AuditProjector, CatalogProjector, MeterProjector
from streams.runner import Runner
from tests.integration.test_faust_worker import Verdict, wait_for
from tests.integration.worker import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

TENANTS = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(1, 6)] + [PLATFORM]
PER_TENANT = 40
EVERY = 7


def audit_records() -> list[Outgoing]:
    """Entries interleaved across tenants, every 9th sent twice (as the relay does after a crash)."""
    records = []
    for n in range(PER_TENANT):
        for t, tenant in enumerate(TENANTS):
            ctx = CommandContext(tenant_id=None, key_id="admin", ip="10.0.0.1", user_agent=f"parity/{n}", trace_id=None)
            outcome = "rejected" if (n + t) % 5 == 0 else "accepted"
            entry = audit_entry(ctx, "api_key.issue", f"keys/{t}-{n}", tenant, outcome=outcome)
            envelope = to_envelope(entry.collect_events()[0])
            records.append(Outgoing(envelope.tenant_id, encode(envelope)))
            if len(records) % 9 == 0:
                records.append(records[-1])
    return records


async def audit_folded(db: PostgresDatabase, log: KafkaLog) -> Verdict:
    """The worker's audit checkpoints are at the audit topic's ends."""
    end = await log.end_offsets(log.topics.audit)

    def read() -> dict[int, int]:
        with db.transaction() as tx:
            return {
                int(p): int(o) for p, o in tx.execute("SELECT partition, next_offset FROM checkpoints WHERE consumer=?", (AUDIT,))
            }

    seen = await asyncio.to_thread(read)
    return Verdict(seen == {p: e for p, e in end.items() if e}, f"audit checkpoints {seen}, log ends {end}")


def chains(db: Database) -> tuple[list[tuple[object, ...]], ...]:
    with db.transaction() as tx:
        return (
            [
                tuple(r)
                for r in tx.execute(
                    "SELECT chain, seq, event_id, time_us, action, actor_key_id, outcome, body FROM audit_entries ORDER BY chain, seq"
                )
            ],
            [tuple(r) for r in tx.execute("SELECT chain, length, head FROM audit_heads ORDER BY chain")],
            [tuple(r) for r in tx.execute("SELECT chain, length, body FROM audit_checkpoints ORDER BY chain, length")],
        )


async def test_embedded_runner_and_faust_worker_build_identical_audit_chains(
    tmp_path: Path,
    kafka_log: KafkaLog,
    topics: Topics,
    views_db: PostgresDatabase,
    database_url: str,
    worker_factory: Callable[[str, str], WorkerProcess],
) -> None:
    key = Ed25519PrivateKey.generate()
    records = audit_records()
    embedded_log = EmbeddedLog(tmp_path / "log.sqlite", Topics(prefix=topics.prefix, usage_partitions=topics.usage_partitions))
    await embedded_log.start()
    for log in (embedded_log, kafka_log):
        for start in range(0, len(records), 50):
            await log.append(topics.audit, records[start : start + 50])

    sqlite_views = SqliteDatabase(tmp_path / "views.sqlite")
    sqlite_views.migrate(VIEW_SCHEMA)
    runner = Runner(
        embedded_log,
        CatalogProjector(sqlite_views, embedded_log.topics),
        MeterProjector(sqlite_views, embedded_log.topics, keep_seen=timedelta(days=8)),
        batch_size=23,
        audit=AuditProjector(sqlite_views, embedded_log.topics, key, every=EVERY),
    )
    await runner.drain()

    worker = worker_factory(database_url, views_db.schema)
    worker.env.update({"OMNI_AUDIT_SIGNING_KEY": private_pem(key), "OMNI_AUDIT_CHECKPOINT_EVERY": str(EVERY)})
    worker.start()
    await wait_for(lambda: audit_folded(views_db, kafka_log), worker, 90, "the worker to fold the audit topic")
    embedded, kafka = chains(sqlite_views), chains(views_db)
    entries, heads, checkpoints = embedded
    assert len(entries) == len(TENANTS) * PER_TENANT  # each record once, the republished ones too
    assert heads == [(tenant, PER_TENANT, heads[i][2]) for i, tenant in enumerate(sorted(TENANTS))]
    assert len(checkpoints) == len(TENANTS) * (PER_TENANT // EVERY)
    assert embedded == kafka
    assert worker.stop() == 0
    await embedded_log.close()
    sqlite_views.close()
