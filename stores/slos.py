"""The SLOs' tables: definitions (their current version), the folds' own checkpoints, minute buckets.

`slos` is written by the catalog projector (with its checkpoint) from `omni.slo.defined`; a row is
replaced only by a higher version, so a control event relayed twice changes nothing.
`slo_deletions` holds the version each deleted SLO ended at (`omni.slo.deleted`): a definition is
read only while no deletion of its name is at its version or later, so a deletion relayed again
hides no later definition, and a definition relayed again shows no deleted one.
`slo_minutes` holds (good, total) per SLO version (its fold id), tenant and minute of event time,
written by the meter projector in the transaction that moves its checkpoints; `slo_offsets` holds
each SLO version's own checkpoint per topic and partition, as `meter_offsets` does for meters, so a
version defined later is caught up from offset zero (streams.slos).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from projections.slos import AlertState, Bucket, GoodTotal, Transition, alert_notice_id, fold_id
from schemas.envelope import format_time, parse_time
from schemas.slos import SloBody
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS slos (
    owner TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, definition TEXT NOT NULL,
    updated_at TEXT NOT NULL, PRIMARY KEY (owner, name));
CREATE TABLE IF NOT EXISTS slo_deletions (
    owner TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, deleted_at TEXT NOT NULL,
    PRIMARY KEY (owner, name));
CREATE TABLE IF NOT EXISTS slo_offsets (
    slo TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (slo, topic, partition));
CREATE TABLE IF NOT EXISTS slo_minutes (
    slo TEXT NOT NULL, tenant_id TEXT NOT NULL, minute BIGINT NOT NULL, good BIGINT NOT NULL, total BIGINT NOT NULL,
    PRIMARY KEY (slo, tenant_id, minute));
CREATE TABLE IF NOT EXISTS slo_alerts (slo TEXT PRIMARY KEY, open_minute BIGINT, firing TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS slo_notifications (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, type TEXT NOT NULL, slo TEXT NOT NULL, version INTEGER NOT NULL,
    alert TEXT NOT NULL, burn_rates TEXT NOT NULL, occurred_at TEXT NOT NULL, recorded INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS slo_notifications_by_tenant ON slo_notifications (tenant_id, occurred_at, id);
CREATE INDEX IF NOT EXISTS slo_notifications_to_record ON slo_notifications (id) WHERE recorded = 0;
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


# The definitions no deletion ended.
_LIVE = (
    "SELECT s.owner, s.name, s.version, s.definition, s.updated_at FROM slos s WHERE NOT EXISTS "
    "(SELECT 1 FROM slo_deletions d WHERE d.owner = s.owner AND d.name = s.name AND d.version >= s.version)"
)


def resolve_ended(tx: Tx, owner: str, name: str, ended: int, at: str) -> None:
    """The SLO's versions up to `ended` end at `at` (a revision to the next, or a deletion): each
    alert of the live version still firing is resolved then. The version is folded no more, so an
    incident its alert opened never closed (and a revision fired the same alert again). Nothing
    when the live version is not among them (an event folded again)."""
    live = one(tx, owner, name)
    if live is None or live.version > ended:
        return
    slo = fold_id(owner, name, live.version)
    state = alert_states(tx, [slo])[slo]
    if state is None or not state.firing:
        return
    moment = int(parse_time(at).timestamp())
    add_alert_notifications(tx, live, slo, [Transition(alert, False, moment, {}) for alert in sorted(state.firing)])
    set_alert_state(tx, slo, AlertState(state.open, frozenset()))


def delete(tx: Tx, owner: str, name: str, version: int, at: str) -> None:
    """The SLO's `version` (and every earlier one) ends: it is no longer read or folded. Its minutes
    stay, as a revised version's do: the meters' fold alone writes them (stores.shadow.FOLDS)."""
    tx.execute(
        "INSERT INTO slo_deletions VALUES (?, ?, ?, ?) ON CONFLICT (owner, name) DO UPDATE SET version=excluded.version, "
        "deleted_at=excluded.deleted_at WHERE slo_deletions.version < excluded.version",
        (owner, name, version, at),
    )


def definitions(tx: Tx) -> list[SloRow]:
    """Every SLO at its current version (one small query per folded batch; none defined: no rows)."""
    return [_row(r) for r in tx.execute(_LIVE)]


def of_owner(tx: Tx, owner: str) -> list[SloRow]:
    return [_row(r) for r in tx.execute(f"{_LIVE} AND s.owner=? ORDER BY s.name", (owner,))]


def names_of(tx: Tx, owner: str) -> list[str]:
    return [r.name for r in of_owner(tx, owner)]


def one(tx: Tx, owner: str, name: str) -> SloRow | None:
    rows = tx.execute(f"{_LIVE} AND s.owner=? AND s.name=?", (owner, name))
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


def alert_states(tx: Tx, slos: Sequence[str]) -> dict[str, AlertState | None]:
    """The alert state of each SLO version, its row locked until the transaction ends (the
    partitions of one topic fold in transactions of their own, and may move one SLO's alerts)."""
    tx.execute_many("INSERT INTO slo_alerts VALUES (?, NULL, '') ON CONFLICT (slo) DO NOTHING", [(s,) for s in sorted(slos)])
    marks = ", ".join("?" for _ in slos)
    lock = " ORDER BY slo FOR UPDATE" if tx.dialect == "postgres" else ""
    rows = tx.execute(f"SELECT slo, open_minute, firing FROM slo_alerts WHERE slo IN ({marks}){lock}", tuple(slos))
    found: dict[str, AlertState | None] = {slo: None for slo in slos}
    for slo, open_minute, firing in rows:
        if open_minute is not None:
            found[slo] = AlertState(int(open_minute), frozenset(a for a in str(firing).split(",") if a))
    return found


def set_alert_state(tx: Tx, slo: str, state: AlertState) -> None:
    tx.execute("UPDATE slo_alerts SET open_minute=?, firing=? WHERE slo=?", (state.open, ",".join(sorted(state.firing)), slo))


def minute_counts(tx: Tx, slo: str, start: int, end: int) -> dict[int, GoodTotal]:
    """Every tenant's counts per minute in [start, end): what the alerts are evaluated from."""
    rows = tx.execute(
        "SELECT minute, SUM(good), SUM(total) FROM slo_minutes WHERE slo=? AND minute>=? AND minute<? GROUP BY minute",
        (slo, start, end),
    )
    return {int(minute): GoodTotal(int(good), int(total)) for minute, good, total in rows}


def add_alert_notifications(tx: Tx, row: SloRow, slo: str, transitions: Sequence[Transition]) -> None:
    """Keep each transition once (its id is deterministic: a batch folded again adds nothing)."""
    tx.execute_many(
        "INSERT INTO slo_notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING",
        [
            (
                alert_notice_id(slo, t),
                row.owner,
                t.type,
                row.name,
                row.version,
                t.alert,
                orjson.dumps(t.burn_rates).decode(),
                format_time(datetime.fromtimestamp(t.at, tz=UTC)),
            )
            for t in transitions
        ],
    )


AlertNotificationRow = tuple[str, str, str, str, int, str, dict[str, float | None], str]
_ALERT_COLUMNS = "id, tenant_id, type, slo, version, alert, burn_rates, occurred_at"


def _alert_row(r: Sequence[Any]) -> AlertNotificationRow:
    return (r[0], r[1], r[2], r[3], int(r[4]), r[5], orjson.loads(r[6]), r[7])


def alert_notifications(tx: Tx, tenant_id: str, limit: int, before: tuple[str, str] | None) -> list[AlertNotificationRow]:
    """The owner's SLO alert transitions, newest first; `before` as stores.quotas.notifications takes it."""
    if before is None:
        rows = tx.execute(
            f"SELECT {_ALERT_COLUMNS} FROM slo_notifications WHERE tenant_id=? ORDER BY occurred_at DESC, id DESC LIMIT ?",
            (tenant_id, limit),
        )
    else:
        rows = tx.execute(
            f"SELECT {_ALERT_COLUMNS} FROM slo_notifications WHERE tenant_id=? "
            "AND (occurred_at < ? OR (occurred_at = ? AND id < ?)) ORDER BY occurred_at DESC, id DESC LIMIT ?",
            (tenant_id, before[0], before[0], before[1], limit),
        )
    return [_alert_row(r) for r in rows]


def unrecorded_alerts(tx: Tx, limit: int) -> list[AlertNotificationRow]:
    rows = tx.execute(
        f"SELECT {_ALERT_COLUMNS} FROM slo_notifications WHERE recorded = 0 ORDER BY occurred_at, id LIMIT ?", (limit,)
    )
    return [_alert_row(r) for r in rows]


def mark_alerts_recorded(tx: Tx, ids: Sequence[str]) -> None:
    tx.execute_many("UPDATE slo_notifications SET recorded = 1 WHERE id = ?", [(i,) for i in ids])
