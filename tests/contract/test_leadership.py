"""One relay leads at a time; when the leader goes, another takes over."""

from __future__ import annotations

from stores.database import PostgresDatabase
from tests.contract.conftest import DATABASE_URL


def test_one_leader_at_a_time_and_takeover(pg_schema: str) -> None:
    first = PostgresDatabase(DATABASE_URL, schema=pg_schema).leadership("relay")
    second = PostgresDatabase(DATABASE_URL, schema=pg_schema).leadership("relay")
    other_schema = PostgresDatabase(DATABASE_URL, schema=pg_schema + "x").leadership("relay")
    try:
        assert first.hold() is True
        assert second.hold() is False
        assert first.hold() is True  # still leading
        assert other_schema.hold() is True  # another deployment on the same server leads its own relay
        first.release()  # the leader's process dies: its session and lock go with it
        assert second.hold() is True
    finally:
        for lead in (first, second, other_schema):
            lead.release()
