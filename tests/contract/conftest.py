"""Each port's adapters, side by side: every contract test runs against all of them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from stores.database import Database, PostgresDatabase, SqliteDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://omni:omni@127.0.0.1:15432/omni")


def postgres_or_skip() -> None:
    try:
        psycopg.connect(DATABASE_URL, connect_timeout=3).close()
    except psycopg.OperationalError as down:
        if os.environ.get("OMNI_REQUIRE_SERVICES"):
            raise
        pytest.skip(f"PostgreSQL unreachable at {DATABASE_URL}: {down}")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    postgres_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db: Database
    if request.param == "sqlite":
        db = SqliteDatabase(tmp_path / "views.sqlite")
    else:
        schema = request.getfixturevalue("pg_schema")
        db = PostgresDatabase(DATABASE_URL, schema=schema)
    db.migrate(VIEW_SCHEMA)
    yield db
    db.close()
