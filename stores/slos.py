"""The SLOs' tables: definitions (their current version), the folds' own checkpoints, minute buckets.

`slos` is written by the catalog projector (with its checkpoint) from `omni.slo.defined`; a row is
replaced only by a higher version, so a control event relayed twice changes nothing.
`slo_minutes` holds (good, total) per SLO version (its fold id), tenant and minute of event time,
written by the meter projector in the transaction that moves its checkpoints; `slo_offsets` holds
each SLO version's own checkpoint per topic and partition, as `meter_offsets` does for meters, so a
version defined later is caught up from offset zero (streams.slos).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from projections.slos import Bucket, GoodTotal
from schemas.slos import SloBody
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS slos (
    owner TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, definition TEXT NOT NULL,
    updated_at TEXT NOT NULL, PRIMARY KEY (owner, name));
CREATE TABLE IF NOT EXISTS slo_offsets (
    slo TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (slo, topic, partition));
CREATE TABLE IF NOT EXISTS slo_minutes (
    slo TEXT NOT NULL, tenant_id TEXT NOT NULL, minute BIGINT NOT NULL, good BIGINT NOT NULL, total BIGINT NOT NULL,
    PRIMARY KEY (slo, tenant_id, minute));
"""


@dataclass(frozen=True, slots=True)
class SloRow:
    owner: str
    name: str
    version: int
    definition: SloBody
    updated_at: str


def _row(row: Sequence[Any]) -> SloRow:
    owner, name, version, definition, updated_at = row
    return SloRow(owner, name, int(version), SloBody.model_validate(orjson.loads(definition)), updated_at)


def put(tx: Tx, owner: str, name: str, version: int, definition: dict[str, Any], at: str) -> None:
    tx.execute(
        "INSERT INTO slos VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, name) DO UPDATE SET version=excluded.version, "
        "definition=excluded.definition, updated_at=excluded.updated_at WHERE slos.version < excluded.version",
        (owner, name, version, orjson.dumps(definition, option=orjson.OPT_SORT_KEYS).decode(), at),
    )


def definitions(tx: Tx) -> list[SloRow]:
    """Every SLO at its current version (one small query per folded batch; none defined: no rows)."""
    return [_row(r) for r in tx.execute("SELECT owner, name, version, definition, updated_at FROM slos")]


def of_owner(tx: Tx, owner: str) -> list[SloRow]:
    rows = tx.execute("SELECT owner, name, version, definition, updated_at FROM slos WHERE owner=? ORDER BY name", (owner,))
    return [_row(r) for r in rows]


def one(tx: Tx, owner: str, name: str) -> SloRow | None:
    rows = tx.execute("SELECT owner, name, version, definition, updated_at FROM slos WHERE owner=? AND name=?", (owner, name))
    return next((_row(r) for r in rows), None)


def checkpoints(tx: Tx, topic: str, partition: int | None = None) -> dict[tuple[str, int], int]:
    """Each SLO version's next offset per partition of `topic` (absent: 0)."""
    if partition is None:
        rows = tx.execute("SELECT slo, partition, next_offset FROM slo_offsets WHERE topic=?", (topic,))
    else:
        rows = tx.execute("SELECT slo, partition, next_offset FROM slo_offsets WHERE topic=? AND partition=?", (topic, partition))
    return {(slo, int(p)): int(o) for slo, p, o in rows}


def set_checkpoints(tx: Tx, topic: str, partition: int, next_offsets: Mapping[str, int]) -> None:
    tx.execute_many(
        "INSERT INTO slo_offsets VALUES (?, ?, ?, ?) "
        "ON CONFLICT (slo, topic, partition) DO UPDATE SET next_offset=excluded.next_offset",
        [(slo, topic, partition, offset) for slo, offset in next_offsets.items()],
    )


def merge(tx: Tx, deltas: Mapping[Bucket, GoodTotal]) -> None:
    """Add a batch's counts to the minute buckets."""
    if not deltas:
        return
    tx.execute_many(
        "INSERT INTO slo_minutes VALUES (?, ?, ?, ?, ?) ON CONFLICT (slo, tenant_id, minute) "
        "DO UPDATE SET good=slo_minutes.good+excluded.good, total=slo_minutes.total+excluded.total",
        [(key.slo, key.tenant_id, key.minute, counts.good, counts.total) for key, counts in sorted(deltas.items())],
    )


def counts(tx: Tx, slo: str, spans: Mapping[str, tuple[int, int]]) -> dict[str, GoodTotal]:
    """The counts over each [start, end) of `spans`, across every tenant the SLO version counts."""
    found = {}
    for label, (start, end) in spans.items():
        rows = tx.execute(
            "SELECT COALESCE(SUM(good), 0), COALESCE(SUM(total), 0) FROM slo_minutes WHERE slo=? AND minute>=? AND minute<?",
            (slo, start, end),
        )
        good, total = next(iter(rows))
        found[label] = GoodTotal(int(good), int(total))
    return found


def windows(tx: Tx, slo: str, start: int, end: int, size: int) -> dict[int, GoodTotal]:
    """The counts per window of `size` seconds from `start` on, in [start, end); windows without counts absent."""
    rows = tx.execute(
        "SELECT (minute - ?) / ? AS n, SUM(good), SUM(total) FROM slo_minutes WHERE slo=? AND minute>=? AND minute<? GROUP BY n",
        (start, size, slo, start, end),
    )
    return {start + int(n) * size: GoodTotal(int(good), int(total)) for n, good, total in rows}
