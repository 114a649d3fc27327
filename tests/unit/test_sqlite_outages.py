"""SQLite failures of the file's own (full, read-only, I/O) are outages of the store, not bugs.

stores.database.SqliteDatabase turned only a failed BEGIN into StoreUnavailable: a statement or a
COMMIT that found the disk full raised sqlite3.OperationalError, which the API answered 500 (a
command's data key, on a full disk). SQLite had also rolled the transaction back itself, so the
ROLLBACK after it failed ("cannot rollback - no transaction is active") and hid why. Now they are
StoreUnavailable (503, nothing done) saying why; a mistake in the SQL stays what it is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stores.database import SqliteDatabase, StoreUnavailable


def full_database(path: Path) -> SqliteDatabase:
    """A database whose file may grow by no page more (SQLite's SQLITE_FULL, as a full disk gives it)."""
    db = SqliteDatabase(path)
    with db.transaction() as tx:
        tx.execute("CREATE TABLE rows (bytes BLOB)")
        tx.execute("INSERT INTO rows VALUES (x'00')")
    (pages,) = db._db.execute("PRAGMA page_count").fetchone()
    db._db.execute(f"PRAGMA max_page_count={pages}")
    return db


def test_a_full_database_is_unavailable_and_keeps_nothing_of_the_transaction(tmp_path: Path) -> None:
    db = full_database(tmp_path / "views.sqlite")
    with pytest.raises(StoreUnavailable, match="database or disk is full"), db.transaction() as tx:
        tx.execute("DELETE FROM rows")
        tx.execute("INSERT INTO rows VALUES (zeroblob(100000))")
    with db.transaction() as tx:  # rolled back whole, and the connection takes the next transaction
        assert tx.execute("SELECT count(*) FROM rows") == [(1,)]
    db.close()


def test_a_mistake_in_the_sql_is_no_outage(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "views.sqlite")
    with pytest.raises(sqlite3.OperationalError, match="no such table"), db.transaction() as tx:
        tx.execute("SELECT * FROM nowhere")
    db.close()
