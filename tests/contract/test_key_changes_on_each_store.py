"""KeyChanges on each event store (SQLite and PostgreSQL): revocations reach the key cache.

Two ControlPlanes on one store stand for two processes: one revokes, the other's
cache must forget once it looks at the changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from commands.control_plane import CommandContext, ControlPlane
from omni.bootstrap import event_store_env
from omni.key_cache import KeyCache, KeyChanges
from omni.settings import Settings
from tests.contract.conftest import DATABASE_URL

ADMIN = CommandContext()


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield event_store_env(Settings(mode="embedded", data_dir=tmp_path))
    else:
        schema = request.getfixturevalue("pg_schema")
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')  # as the views' migration does, before the event store
        yield event_store_env(Settings(mode="kafka", database_url=DATABASE_URL, database_schema=schema))


def authenticated(control: ControlPlane, cache: KeyCache, token: str) -> bool:
    """What Platform does: the cache first, else the store (keeping what it read)."""
    if cache.get(token) is not None:
        return True
    generation = cache.generation
    principal = control.authenticate(token)
    if principal is not None:
        cache.put(token, principal, generation)
    return principal is not None


def test_a_revocation_by_another_process_is_forgotten_on_the_next_look(store_env: dict[str, str]) -> None:
    writer, reader = ControlPlane(env=store_env), ControlPlane(env=store_env)
    try:
        tenant, kept = writer.create_tenant(ADMIN, "acme", "pro")
        revoked = writer.issue_key(ADMIN, str(tenant.id), "ci")
        cache = KeyCache()
        changes = KeyChanges(reader.recorder, cache, page=2)  # small pages: the paging is exercised too
        changes.start_watching()
        assert authenticated(reader, cache, kept.token) and authenticated(reader, cache, revoked.token)
        assert len(cache) == 2

        for n in range(3):  # other events in between, more than a page of them
            writer.create_tenant(ADMIN, f"other-{n}", "free")
        writer.revoke_key(ADMIN, revoked.key_id)
        assert cache.get(revoked.token) is not None, "not looked yet: still kept"

        changes.catch_up()
        assert cache.get(revoked.token) is None
        assert not authenticated(reader, cache, revoked.token)
        assert cache.get(kept.token) is not None, "a key that did not change stays"
        changes.catch_up()  # nothing new: nothing forgotten
        assert cache.get(kept.token) is not None
    finally:
        writer.close()
        reader.close()


def test_changes_from_before_watching_do_not_matter(store_env: dict[str, str]) -> None:
    control = ControlPlane(env=store_env)
    try:
        tenant, key = control.create_tenant(ADMIN, "acme", "pro")
        control.revoke_key(ADMIN, key.key_id)
        cache = KeyCache()
        changes = KeyChanges(control.recorder, cache)
        changes.start_watching()
        assert cache.trusted and not authenticated(control, cache, key.token) and len(cache) == 0
        second = control.issue_key(ADMIN, str(tenant.id))
        assert authenticated(control, cache, second.token)
        changes.catch_up()
        assert cache.get(second.token) is not None, "an issued key's own event does not evict it"
    finally:
        control.close()
