"""The GDPR views: data classes (their current version), requests with their steps, exports.

Written by the catalog projector from the control topic (data classes, requests and steps), except
`gdpr_exports`, which the request jobs write (an export is a document made for its request, kept
until the person is erased).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from projections.gdpr import BreachNotified, BreachRecorded, DataClassDefined, RequestStep, RetentionSet
from schemas.gdpr import DataClassBody
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS data_classes (
    event_type TEXT PRIMARY KEY, version INTEGER NOT NULL, definition TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gdpr_requests (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, subject TEXT NOT NULL, kind TEXT NOT NULL, received_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gdpr_steps (
    event_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, status TEXT NOT NULL, step TEXT NOT NULL, at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS gdpr_steps_by_request ON gdpr_steps (request_id, at);
CREATE TABLE IF NOT EXISTS gdpr_exports (
    request_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, subject TEXT NOT NULL, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gdpr_breaches (
    id TEXT PRIMARY KEY, detected_at TEXT NOT NULL, recorded_at TEXT NOT NULL, deadline TEXT NOT NULL, scope TEXT NOT NULL,
    subjects BIGINT, description TEXT, notified_at TEXT, overdue_notice_at TEXT);
CREATE TABLE IF NOT EXISTS gdpr_retention (
    tenant_id TEXT PRIMARY KEY, days INTEGER, version INTEGER NOT NULL, updated_at TEXT NOT NULL)
"""


@dataclass(frozen=True, slots=True)
class DataClassRow:
    event_type: str
    version: int
    definition: DataClassBody
    updated_at: str


@dataclass(frozen=True, slots=True)
class RequestRow:
    id: str
    tenant_id: str
    subject: str
    kind: str
    received_at: str
    steps: list[tuple[str, str, str]]  # (status, step, at), in order

    @property
    def status(self) -> str:
        return self.steps[-1][0] if self.steps else "received"


def put_data_class(tx: Tx, change: DataClassDefined) -> None:
    tx.execute(
        "INSERT INTO data_classes VALUES (?, ?, ?, ?) ON CONFLICT (event_type) DO UPDATE SET version=excluded.version, "
        "definition=excluded.definition, updated_at=excluded.updated_at WHERE data_classes.version < excluded.version",
        (change.event_type, change.version, orjson.dumps(change.definition, option=orjson.OPT_SORT_KEYS).decode(), change.at),
    )


def _class_row(row: Sequence[Any]) -> DataClassRow:
    event_type, version, definition, at = row
    return DataClassRow(event_type, int(version), DataClassBody.model_validate(orjson.loads(definition)), at)


def data_classes(tx: Tx) -> list[DataClassRow]:
    rows = tx.execute("SELECT event_type, version, definition, updated_at FROM data_classes ORDER BY event_type")
    return [_class_row(r) for r in rows]


def data_class(tx: Tx, event_type: str) -> DataClassRow | None:
    rows = tx.execute("SELECT event_type, version, definition, updated_at FROM data_classes WHERE event_type=?", (event_type,))
    return next((_class_row(r) for r in rows), None)


def add_step(tx: Tx, step: RequestStep) -> None:
    if step.subject is not None and step.kind is not None:
        tx.execute(
            "INSERT INTO gdpr_requests VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (step.request_id, step.tenant_id, step.subject, step.kind, step.at),
        )
    tx.execute(
        "INSERT INTO gdpr_steps VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
        (step.event_id, step.request_id, step.status, step.step, step.at),
    )


def request(tx: Tx, tenant_id: str, request_id: str) -> RequestRow | None:
    rows = tx.execute(
        "SELECT id, tenant_id, subject, kind, received_at FROM gdpr_requests WHERE id=? AND tenant_id=?", (request_id, tenant_id)
    )
    found = next(iter(rows), None)
    if found is None:
        return None
    steps = tx.execute("SELECT status, step, at FROM gdpr_steps WHERE request_id=? ORDER BY at, event_id", (request_id,))
    return RequestRow(*found, steps=[(s, st, at) for s, st, at in steps])


def unfinished_requests(tx: Tx) -> list[tuple[str, str]]:
    """(tenant id, request id) of every request with no `completed` or `failed` step, oldest first:
    what a process that stopped left to do (or what runs now). Reads every request once."""
    rows = tx.execute(
        "SELECT r.tenant_id, r.id FROM gdpr_requests r WHERE NOT EXISTS (SELECT 1 FROM gdpr_steps s "
        "WHERE s.request_id = r.id AND s.status IN ('completed', 'failed')) ORDER BY r.received_at, r.id"
    )
    return [(str(t), str(i)) for t, i in rows]


def requests_of_subject(tx: Tx, tenant_id: str, subject: str) -> list[dict[str, Any]]:
    rows = tx.execute(
        "SELECT id, kind, received_at FROM gdpr_requests WHERE tenant_id=? AND subject=? ORDER BY received_at",
        (tenant_id, subject),
    )
    return [{"id": i, "kind": k, "received_at": at} for i, k, at in rows]


def put_export(tx: Tx, request_id: str, tenant_id: str, subject: str, document: str) -> None:
    tx.execute(
        "INSERT INTO gdpr_exports VALUES (?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET document=excluded.document",
        (request_id, tenant_id, subject, document),
    )


def export(tx: Tx, tenant_id: str, request_id: str) -> str | None:
    rows = tx.execute("SELECT document FROM gdpr_exports WHERE request_id=? AND tenant_id=?", (request_id, tenant_id))
    return next((r[0] for r in rows), None)


def has_export(tx: Tx, tenant_id: str, request_id: str) -> bool:
    return bool(tx.execute("SELECT 1 FROM gdpr_exports WHERE request_id=? AND tenant_id=?", (request_id, tenant_id)))


def forget_exports(tx: Tx, tenant_id: str, subject: str) -> int:
    """Erasure: the exports made for the person go (they hold decrypted personal data)."""
    rows = tx.execute("SELECT request_id FROM gdpr_exports WHERE tenant_id=? AND subject=?", (tenant_id, subject))
    tx.execute("DELETE FROM gdpr_exports WHERE tenant_id=? AND subject=?", (tenant_id, subject))
    return len(rows)


_PSEUDONYMS_A_QUERY = 200  # SQLite: the person's pseudonyms looked for in one statement


def meter_rows_naming(tx: Tx, tenant_id: str, subject: str, pseudonyms: Collection[str]) -> list[dict[str, Any]]:
    """The meters' day buckets that may name the person: those whose subject is the person, and
    those holding one of the person's pseudonyms among their group values or distinct values (a
    data class that names the person in the event's data leaves the bucket's subject to someone
    else: the person is in it by the pseudonyms of their values). A candidate only: which of its
    parts are the person's is decided by who reads it (omni.gdpr_jobs.row_about_person). Each with
    what the meter's aggregation keeps (a total, the least and the greatest value, the latest, the
    distinct values; those it does not keep are left out)."""
    columns = "meter, window_start, subject, group_key, count, total, minimum, maximum, latest, uniques"
    where = f"SELECT {columns} FROM meter_windows WHERE tenant_id=? AND resolution=86400 AND "
    found: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    queries: list[tuple[str, list[Any]]] = [(where + "subject=?", [tenant_id, subject])]
    wanted = sorted(set(pseudonyms))
    if wanted and tx.dialect == "postgres":
        quoted = [orjson.dumps(p).decode() for p in wanted]  # group_values hold each value's JSON text
        queries.append((where + "(group_values && ? OR uniques && ?)", [tenant_id, quoted, wanted]))
    else:
        for first in range(0, len(wanted), _PSEUDONYMS_A_QUERY):
            chunk = wanted[first : first + _PSEUDONYMS_A_QUERY]
            held = " OR ".join("instr(group_key, ?) > 0 OR instr(coalesce(uniques, ''), ?) > 0" for _ in chunk)
            queries.append((where + f"({held})", [tenant_id, *(p for p in chunk for _ in (0, 1))]))
    for sql, params in queries:
        for row in tx.execute(sql, params):
            found[(row[0], row[1], row[2], row[3])] = row
    rows = []
    for key in sorted(found):
        meter, window, row_subject, group, count, total, minimum, maximum, latest, uniques = found[key]
        row: dict[str, Any] = {
            "meter": meter,
            "day_start": int(window),
            "subject": row_subject,
            "group": orjson.loads(group),
            "count": int(count),
            "total": str(total),
        }
        for name, value in (("minimum", minimum), ("maximum", maximum), ("latest", latest)):
            if value is not None:
                row[name] = str(value)
        if uniques:
            row["uniques"] = sorted(orjson.loads(uniques) if isinstance(uniques, str) else uniques)
        rows.append(row)
    return rows


BREACH_COLUMNS = "id, detected_at, recorded_at, deadline, scope, subjects, description, notified_at, overdue_notice_at"


@dataclass(frozen=True, slots=True)
class BreachRow:
    id: str
    detected_at: str
    recorded_at: str
    deadline: str
    scope: str
    subjects: int | None
    description: str | None
    notified_at: str | None
    overdue_notice_at: str | None

    def status(self, now: str) -> str:
        if self.notified_at is not None:
            return "notified"
        return "overdue" if now >= self.deadline else "open"


def add_breach(tx: Tx, change: BreachRecorded) -> None:
    tx.execute(
        "INSERT INTO gdpr_breaches VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT (id) DO NOTHING",
        (
            change.breach_id,
            change.detected_at,
            change.recorded_at,
            change.deadline,
            change.scope,
            change.subjects,
            change.description,
        ),
    )


def breach_notified(tx: Tx, change: BreachNotified) -> None:
    tx.execute(
        "UPDATE gdpr_breaches SET notified_at=? WHERE id=? AND notified_at IS NULL", (change.notified_at, change.breach_id)
    )


def _breach(row: Sequence[Any]) -> BreachRow:
    values = list(row)
    values[5] = None if values[5] is None else int(values[5])
    return BreachRow(*values)


def breaches(tx: Tx) -> list[BreachRow]:
    return [_breach(r) for r in tx.execute(f"SELECT {BREACH_COLUMNS} FROM gdpr_breaches ORDER BY detected_at DESC, id")]


def breach(tx: Tx, breach_id: str) -> BreachRow | None:
    rows = tx.execute(f"SELECT {BREACH_COLUMNS} FROM gdpr_breaches WHERE id=?", (breach_id,))
    return next((_breach(r) for r in rows), None)


def overdue_unnoticed(tx: Tx, now: str) -> list[BreachRow]:
    """Breaches past their deadline, the authority not notified, and no overdue notice emitted yet."""
    rows = tx.execute(
        f"SELECT {BREACH_COLUMNS} FROM gdpr_breaches WHERE deadline <= ? AND notified_at IS NULL AND overdue_notice_at IS NULL",
        (now,),
    )
    return [_breach(r) for r in rows]


def overdue_noticed(tx: Tx) -> list[BreachRow]:
    """Breaches whose overdue notice was emitted (the register is the admin's, and short)."""
    return [_breach(r) for r in tx.execute(f"SELECT {BREACH_COLUMNS} FROM gdpr_breaches WHERE overdue_notice_at IS NOT NULL")]


def mark_overdue_noticed(tx: Tx, breach_id: str, at: str) -> None:
    tx.execute("UPDATE gdpr_breaches SET overdue_notice_at=? WHERE id=? AND overdue_notice_at IS NULL", (at, breach_id))


def put_retention(tx: Tx, change: RetentionSet) -> None:
    tx.execute(
        "INSERT INTO gdpr_retention VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET days=excluded.days, "
        "version=excluded.version, updated_at=excluded.updated_at WHERE gdpr_retention.version < excluded.version",
        (change.tenant_id, change.days, change.version, change.at),
    )


def retention(tx: Tx, tenant_id: str) -> RetentionSet | None:
    rows = tx.execute("SELECT tenant_id, days, version, updated_at FROM gdpr_retention WHERE tenant_id=?", (tenant_id,))
    return next((RetentionSet(t, None if d is None else int(d), int(v), at) for t, d, v, at in rows), None)


def retention_periods(tx: Tx) -> dict[str, int]:
    """Each tenant with a retention period: its days."""
    rows = tx.execute("SELECT tenant_id, days FROM gdpr_retention WHERE days IS NOT NULL ORDER BY tenant_id")
    return {str(t): int(d) for t, d in rows}
