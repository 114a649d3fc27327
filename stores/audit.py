"""The audit chains' tables: entries, each chain's head, periodic checkpoints (projections.audit_chain).

`body` is the entry's (or checkpoint's) RFC 8785 canonical JSON, exactly the line an export
writes; the other columns are for the queries of GET /v1/audit. Rebuildable from the audit topic,
like every view, to the same bytes: except `audit_signing_key`, which keeps the signing key that
Kafka mode generates when none is configured (README, "Audit trail").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from projections.audit_chain import Head
from projections.jcs import canonical
from projections.merkle import Frontier, frontier_of
from schemas.envelope import parse_time
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_entries (
    chain TEXT NOT NULL, seq BIGINT NOT NULL, event_id TEXT NOT NULL, time_us BIGINT NOT NULL, action TEXT,
    actor_key_id TEXT, outcome TEXT, body TEXT NOT NULL, PRIMARY KEY (chain, seq));
CREATE UNIQUE INDEX IF NOT EXISTS audit_entries_by_event ON audit_entries (event_id);
CREATE INDEX IF NOT EXISTS audit_entries_by_time ON audit_entries (chain, time_us);
CREATE TABLE IF NOT EXISTS audit_heads (chain TEXT PRIMARY KEY, length BIGINT NOT NULL, head TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_trees (chain TEXT PRIMARY KEY, frontier TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain TEXT NOT NULL, length BIGINT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (chain, length));
CREATE TABLE IF NOT EXISTS audit_signing_key (name TEXT PRIMARY KEY, pem TEXT NOT NULL);
"""

_CHUNK = 500


def micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def known(tx: Tx, event_ids: Sequence[str]) -> set[str]:
    """Which of these audit events are in a chain already."""
    found: set[str] = set()
    for start in range(0, len(event_ids), _CHUNK):
        chunk = event_ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found |= {row[0] for row in tx.execute(f"SELECT event_id FROM audit_entries WHERE event_id IN ({marks})", chunk)}
    return found


def heads(tx: Tx, chains: Iterable[str]) -> dict[str, Head]:
    found: dict[str, Head] = {}
    for chain in sorted(set(chains)):
        rows = tx.execute(
            "SELECT h.length, h.head, t.frontier FROM audit_heads h LEFT JOIN audit_trees t ON t.chain = h.chain WHERE h.chain=?",
            (chain,),
        )
        if rows:
            length, head, frontier = int(rows[0][0]), str(rows[0][1]), rows[0][2]
            tree = Frontier.parse(str(frontier)) if frontier is not None else frontier_of(leaves(tx, chain, length))
            if tree.size != length:  # cannot be, unless edited by hand: the entries are the truth
                tree = frontier_of(leaves(tx, chain, length))
            found[chain] = Head(length, head, tree)
    return found


def leaves(tx: Tx, chain: str, through: int) -> list[bytes]:
    """The Merkle leaves of the chain's first `through` entries (their hashes), in order. (A chain
    linked before the trees were kept gets its tree from here once.)"""
    rows = tx.execute("SELECT body FROM audit_entries WHERE chain=? AND seq<=? ORDER BY seq", (chain, through))
    return [bytes.fromhex(orjson.loads(body)["hash"]) for (body,) in rows]


def write(tx: Tx, entries: Sequence[dict[str, Any]], checkpoints: Sequence[dict[str, Any]], new_heads: dict[str, Head]) -> None:
    tx.execute_many(
        "INSERT INTO audit_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                e["chain"],
                e["seq"],
                e["id"],
                micros(parse_time(e["time"])),
                e["action"],
                e["actor"]["key_id"],
                e["outcome"],
                canonical(e).decode(),
            )
            for e in entries
        ],
    )
    tx.execute_many(
        "INSERT INTO audit_checkpoints VALUES (?, ?, ?)", [(c["chain"], c["length"], canonical(c).decode()) for c in checkpoints]
    )
    tx.execute_many(
        "INSERT INTO audit_heads VALUES (?, ?, ?) ON CONFLICT (chain) DO UPDATE SET length=excluded.length, head=excluded.head",
        [(chain, head.length, head.hash) for chain, head in sorted(new_heads.items())],
    )
    tx.execute_many(
        "INSERT INTO audit_trees VALUES (?, ?) ON CONFLICT (chain) DO UPDATE SET frontier=excluded.frontier",
        [(chain, head.tree.text()) for chain, head in sorted(new_heads.items())],
    )


def entry(tx: Tx, chain: str, seq: int) -> str | None:
    """The body of entry `seq` of the chain."""
    rows = tx.execute("SELECT body FROM audit_entries WHERE chain=? AND seq=?", (chain, seq))
    return str(rows[0][0]) if rows else None


def checkpoint_at(tx: Tx, chain: str, length: int) -> str | None:
    """The body of the chain's periodic checkpoint of its first `length` entries."""
    rows = tx.execute("SELECT body FROM audit_checkpoints WHERE chain=? AND length=?", (chain, length))
    return str(rows[0][0]) if rows else None


@dataclass(frozen=True, slots=True)
class Filters:
    start_us: int | None = None  # entries at or after
    end_us: int | None = None  # entries before
    action: str | None = None
    actor: str | None = None  # the key id
    outcome: str | None = None


def entries(tx: Tx, chain: str, filters: Filters, *, after: int, limit: int) -> list[tuple[int, str]]:
    """(seq, body) of the chain's entries past `after` that pass the filters, in chain order."""
    where, params = ["chain=?", "seq>?"], [chain, after]
    for column, op, value in (
        ("time_us", ">=", filters.start_us),
        ("time_us", "<", filters.end_us),
        ("action", "=", filters.action),
        ("actor_key_id", "=", filters.actor),
        ("outcome", "=", filters.outcome),
    ):
        if value is not None:
            where.append(f"{column}{op}?")
            params.append(value)
    rows = tx.execute(f"SELECT seq, body FROM audit_entries WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?", (*params, limit))
    return [(int(seq), str(body)) for seq, body in rows]


def bodies_between(tx: Tx, chain: str, after: int, through: int, limit: int) -> list[tuple[int, str]]:
    """(seq, body) of entries after..through, in order, at most `limit`."""
    rows = tx.execute(
        "SELECT seq, body FROM audit_entries WHERE chain=? AND seq>? AND seq<=? ORDER BY seq LIMIT ?",
        (chain, after, through, limit),
    )
    return [(int(seq), str(body)) for seq, body in rows]


def checkpoints_through(tx: Tx, chain: str, through: int) -> dict[int, str]:
    rows = tx.execute("SELECT length, body FROM audit_checkpoints WHERE chain=? AND length<=?", (chain, through))
    return {int(length): str(body) for length, body in rows}


def signing_key(tx: Tx, name: str) -> str | None:
    rows = tx.execute("SELECT pem FROM audit_signing_key WHERE name=?", (name,))
    return str(rows[0][0]) if rows else None


def keep_signing_key(tx: Tx, name: str, pem: str) -> str:
    """Store `pem` unless a key is stored already; the one stored (so racing processes agree)."""
    tx.execute("INSERT INTO audit_signing_key VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, pem))
    stored = signing_key(tx, name)
    assert stored is not None
    return stored
