"""The audit projector on SQLite and PostgreSQL alike: it links each audit event into its tenant's
chain once, with periodic checkpoints signed by its key (an export of what it stored verifies with
the public key), dead-letters what it cannot decode or link with the reason, counts holes, dead
letters and records, and stops at its crash point before its commit. (`make mutation` found no fast
test of streams.projectors.AuditProjector.)"""

from __future__ import annotations

import json

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from omni import failpoints
from projections.audit_chain import EMPTY, checkpoint, export_lines
from projections.audit_verify import Intact, verify
from schemas.envelope import Envelope, encode
from schemas.topics import Topics
from stores import audit as audit_store
from stores import views
from stores.database import Database
from streams.log import LogRecord
from streams.projectors import AUDIT, AuditProjector
from tests.unit.test_audit_chain import audit_event

TOPICS = Topics(prefix="au", usage_partitions=1)
KEY = Ed25519PrivateKey.generate()


def record(offset: int, event: Envelope | bytes) -> LogRecord:
    return LogRecord(TOPICS.audit, 0, offset, "tenant-a", event if isinstance(event, bytes) else encode(event))


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def counters() -> tuple[float, float, float]:
    return (
        sample("omni_dead_letters_total", {"consumer": AUDIT}),
        sample("omni_log_holes_total"),
        sample("omni_projected_records_total", {"projector": AUDIT}),
    )


def exported(db: Database, chain: str) -> list[bytes]:
    with db.transaction() as tx:
        entries = audit_store.bodies_between(tx, chain, 0, 100, 100)
        checkpoints = audit_store.checkpoints_through(tx, chain, 100)
        head = audit_store.heads(tx, [chain]).get(chain, EMPTY)
    final = checkpoint(chain, head, "2026-11-03T00:00:00.000000Z", final=True, key=KEY)
    return [line.encode() for line in export_lines(entries, checkpoints, final)]


def test_the_audit_fold_links_signs_dead_letters_and_counts(database: Database) -> None:
    projector = AuditProjector(database, TOPICS, KEY, every=2)
    unlinkable = audit_event(3, trace_id=2**60)  # past I-JSON's exact integers: no canonical form, no entry
    other = msgspec.structs.replace(audit_event(9), type="omni.tenant.created")  # not an audit event: skipped
    batch = [
        record(0, audit_event(1)),
        record(1, audit_event(2)),
        record(2, unlinkable),
        record(3, b"not an envelope"),
        record(5, audit_event(4)),  # offset 4 is missing: a hole
        record(6, other),
        record(7, audit_event(5)),
    ]
    before = counters()
    assert projector.process(0, batch) == 7
    assert projector.process(0, batch) == 0  # applied already
    dead, holes, projected = (after - was for after, was in zip(counters(), before, strict=True))
    assert (dead, holes, projected) == (2, 1, 7)
    with database.transaction() as tx:
        letters = views.dead_letters(tx, TOPICS.audit)
    assert [(partition, offset, consumer) for partition, offset, consumer, _ in letters] == [(0, 2, AUDIT), (0, 3, AUDIT)]
    assert letters[0][3] == "integer 1152921504606846976 is outside I-JSON's exact range (±2**53 - 1)"
    outcome = verify(exported(database, "tenant-a"), KEY.public_key())
    assert isinstance(outcome, Intact) and (outcome.entries, outcome.checkpoints) == (4, 2)  # every second entry
    bodies = [json.loads(line) for line in exported(database, "tenant-a")]
    assert [b["resource"] for b in bodies if b["kind"] == "entry"] == ["keys/k1", "keys/k2", "keys/k4", "keys/k5"]

    failpoints.arm(failpoints.AUDIT_BEFORE_COMMIT)
    try:
        with pytest.raises(failpoints.FailpointHit, match=failpoints.AUDIT_BEFORE_COMMIT):
            projector.process(0, [record(8, audit_event(6))])
    finally:
        failpoints.disarm_all()
    assert counters()[2] - before[2] == 7
    assert projector.process(0, [record(8, audit_event(6))]) == 1  # nothing of the failed try stayed
    outcome = verify(exported(database, "tenant-a"), KEY.public_key())
    assert isinstance(outcome, Intact) and (outcome.entries, outcome.checkpoints) == (5, 2)
