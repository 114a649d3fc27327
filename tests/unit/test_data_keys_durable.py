"""A 202 for an event carrying personal data outlives a power cut with the key that sealed it.

Admission seals personal data with the person's data key, creating it if new, in the event store's
SQLite file (embedded mode), then appends the event to the log, whose commits are fsynced
(synchronous=FULL) before the 202. The data keys' connection committed with synchronous=NORMAL,
which in WAL mode does not sync a commit: after a power cut the log could hold the sealed event and
the event store not the key, so the person's data in it could never be opened again (nor its
pseudonym recomputed). Its commits are synced too now; the views' stay NORMAL (a view lost to a
power cut is folded again from the log)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from omni.bootstrap import build
from tests.e2e.conftest import embedded_settings

FULL, NORMAL = 2, 1


def test_the_data_keys_are_synced_at_each_commit_and_the_views_need_not_be(tmp_path: Path) -> None:
    platform = build(embedded_settings(tmp_path / "data"))
    try:
        keys = platform.personal.keys_db._db  # type: ignore[attr-defined]
        views = platform.db._db  # type: ignore[attr-defined]
        assert keys.execute("PRAGMA synchronous").fetchone() == (FULL,)
        assert views.execute("PRAGMA synchronous").fetchone() == (NORMAL,)
    finally:
        asyncio.run(platform.stop())
