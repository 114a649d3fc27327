"""Data keys on each event store (SQLite and PostgreSQL): sealing at admission, and an erasure by one
process reaching the key cache of another, which never uses the erased key again.

Two ControlPlanes and two PersonalData on one store stand for two API processes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from commands.control_plane import CommandContext, ControlPlane
from omni.bootstrap import event_store_env
from omni.personal_data import KeysMissing, MasterKey, PersonalData
from omni.settings import Settings
from schemas.envelope import Envelope
from schemas.gdpr import DataClassBody, RequestKind, RequestStatus
from stores import data_keys
from stores.database import Database, PostgresDatabase, SqliteDatabase
from tests.contract.conftest import DATABASE_URL

ADMIN = CommandContext()
MASTER = MasterKey(b"0123456789abcdef0123456789abcdef")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], Database]]:
    db: Database
    if request.param == "sqlite":
        env = event_store_env(Settings(mode="embedded", data_dir=tmp_path))
        db = SqliteDatabase(tmp_path / "eventstore.sqlite")
    else:
        schema = request.getfixturevalue("pg_schema")
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        env = event_store_env(Settings(mode="kafka", database_url=DATABASE_URL, database_schema=schema))
        db = PostgresDatabase(DATABASE_URL, schema=schema)
    data_keys.migrate(db)
    yield env, db
    db.close()


def chat(n: int, subject: str, email: str) -> Envelope:
    at = datetime(2025, 1, 1, tzinfo=UTC)
    data = {"email": email, "tokens": n}
    return Envelope(
        id=f"e{n}",
        type="chat",
        tenant_id="t1",
        source="s",
        source_id=str(n),
        event_time=at,
        recorded_time=at,
        data=data,
        subject=subject,
    )


def test_an_erasure_by_one_process_is_never_undone_by_another(store: tuple[dict[str, str], Database]) -> None:
    env, db = store
    writer, reader = ControlPlane(env=env), ControlPlane(env=env)
    try:
        one = PersonalData(MASTER, db, writer.recorder, writer.mapper.to_domain_event)
        two = PersonalData(MASTER, db, reader.recorder, reader.mapper.to_domain_event)
        one.start_watching()
        two.start_watching()
        writer.put_data_class(ADMIN, "chat", DataClassBody.model_validate({"personal": ["$.data.email"]}))
        untouched = [chat(0, "alice", "alice@example.com")]
        two.protect(untouched, may_block=True)  # not looked at the store yet: no data class known
        assert untouched[0].data["email"] == "alice@example.com"
        two.catch_up()
        events = [chat(1, "alice", "alice@example.com"), chat(2, "bob", "bob@example.com")]
        with pytest.raises(KeysMissing):
            two.protect(events, may_block=False)  # the keys are not in memory: off the event loop
        two.protect(events, may_block=True)
        assert events[0].data_subject_id is None and events[0].data["tokens"] == 1  # the subject is the person
        sealed = events[0].data["email"]
        assert sealed["omni_sealed"] == 1 and "alice" not in str(sealed)
        again = [chat(3, "alice", "alice@example.com")]
        two.protect(again, may_block=False)  # cached now: on the loop
        assert again[0].data["email"]["ps"] == sealed["ps"]
        alice_key = two.cache.get("t1", "alice")
        assert alice_key is not None
        assert two.opened(events[0], {"alice": alice_key}) == {"email": "alice@example.com", "tokens": 1}

        # A data class may name the person under data: the envelope then says whom (datasubjectid).
        writer.put_data_class(
            ADMIN, "note", DataClassBody.model_validate({"personal": ["$.data.text"], "subject_property": "$.data.user"})
        )
        two.catch_up()
        at = datetime(2025, 1, 1, tzinfo=UTC)
        note = [
            Envelope(
                id="n",
                type="note",
                tenant_id="t1",
                source="s",
                source_id="n",
                event_time=at,
                recorded_time=at,
                data={"user": "bob", "text": "hi"},
            )
        ]
        two.protect(note, may_block=True)
        assert note[0].data_subject_id == "bob" and note[0].data["text"]["omni_sealed"] == 1
        assert two.opened(note[0], two.keys_for("t1", ["bob"], create=False)) == {"user": "bob", "text": "hi"}

        # Process one erases: the key goes from the store, then SubjectErased is recorded.
        request = writer.receive_gdpr_request(ADMIN, "t1", "alice", RequestKind.ERASURE)
        erased = one.erase("t1", "alice")
        assert erased == sealed["kid"]
        writer.advance_gdpr_request(ADMIN, request, RequestStatus.COMPLETED, "erased", erased_key=erased, erased=True)
        assert one.erase("t1", "alice") is None  # again: nothing to do
        assert two.cache.get("t1", "alice") is not None  # process two has not looked yet
        two.catch_up()
        assert two.cache.get("t1", "alice") is None and two.cache.get("t1", "bob") is not None
        assert two.keys_for("t1", ["alice"], create=False) == {}
        assert two.opened(events[0], two.keys_for("t1", ["alice", "bob"], create=False))["email"] is None
        assert two.opened(events[1], two.keys_for("t1", ["bob"], create=False))["email"] == "bob@example.com"

        # Alice seen again: a new key, never the erased one; the old values stay unreadable.
        later = [chat(4, "alice", "alice@example.com")]
        two.protect(later, may_block=True)
        assert later[0].data["email"]["kid"] != erased
        assert later[0].data["email"]["ps"] != sealed["ps"]  # unlinkable to what came before
        assert two.opened(events[0], two.keys_for("t1", ["alice"], create=False))["email"] is None
    finally:
        writer.close()
        reader.close()


def test_an_untrusted_cache_keeps_nothing_and_reads_the_store(store: tuple[dict[str, str], Database]) -> None:
    env, db = store
    control = ControlPlane(env=env)
    try:
        personal = PersonalData(MASTER, db, control.recorder, control.mapper.to_domain_event)
        control.put_data_class(ADMIN, "chat", DataClassBody.model_validate({"personal": ["$.data.email"]}))
        with pytest.raises(KeysMissing):
            personal.protect([chat(1, "alice", "a@x")], may_block=False)  # not watching: nothing known on the loop
        events = [chat(1, "alice", "a@x")]
        personal.protect(events, may_block=True)  # reads the data classes and the key from the store
        assert events[0].data["email"]["omni_sealed"] == 1
        assert personal.cache.get("t1", "alice") is None  # nothing kept while not watched
        no_master = PersonalData(None, db, control.recorder, control.mapper.to_domain_event)
        with pytest.raises(Exception, match="OMNI_GDPR_MASTER_KEY"):
            no_master.protect([chat(2, "carol", "c@x")], may_block=True)
    finally:
        control.close()


def test_the_last_event_time_a_retention_sweep_reads(store: tuple[dict[str, str], Database]) -> None:
    """Persons with a live key and no event since a cutoff, oldest first; a later touch keeps the
    later time, an erasure forgets the person, another tenant's persons are not listed."""
    _, db = store
    key = data_keys.StoredKey("k", MASTER.id, MASTER.wrap(bytes(32)))
    with db.transaction() as tx:
        data_keys.create(tx, "t1", {"old": key, "seen": key, "never-touched": key}, "2025-01-01T00:00:00.000000Z")
        data_keys.create(tx, "t2", {"old": key}, "2025-01-01T00:00:00.000000Z")
        data_keys.touch(tx, "t1", ["old", "seen"], "2025-02-01T00:00:00.000000Z")
        data_keys.touch(tx, "t1", ["seen"], "2025-06-01T00:00:00.000000Z")
        data_keys.touch(tx, "t1", ["seen"], "2025-03-01T00:00:00.000000Z")  # earlier: the later time stays
    with db.transaction() as tx:
        idle = data_keys.idle(tx, "t1", "2025-05-01T00:00:00.000000Z", 10)
        assert [(p.subject, p.last_seen_at) for p in idle] == [
            ("never-touched", "2025-01-01T00:00:00.000000Z"),  # from its creation
            ("old", "2025-02-01T00:00:00.000000Z"),
        ]
        assert [p.subject for p in data_keys.idle(tx, "t1", "2025-05-01T00:00:00.000000Z", 1)] == ["never-touched"]
        assert [p.subject for p in data_keys.idle(tx, "t1", "2025-07-01T00:00:00.000000Z", 10)] == [
            "never-touched",
            "old",
            "seen",
        ]
        assert data_keys.erase(tx, "t1", "old", "2025-05-02T00:00:00.000000Z") == "k"
    with db.transaction() as tx:
        assert [p.subject for p in data_keys.idle(tx, "t1", "2025-07-01T00:00:00.000000Z", 10)] == ["never-touched", "seen"]
        assert [p.subject for p in data_keys.idle(tx, "t2", "2025-07-01T00:00:00.000000Z", 10)] == ["old"]


def test_an_actors_ip_address_and_user_agent_are_sealed_for_its_chain_and_shredded_with_its_key(
    store: tuple[dict[str, str], Database],
) -> None:
    env, db = store
    control = ControlPlane(env=env)
    try:
        personal = PersonalData(MASTER, db, control.recorder, control.mapper.to_domain_event)
        ip, agent = personal.seal_actor("t1", "k1", "203.0.113.9", "console/1")
        assert ip["ps"].startswith("ps2_") and "ct" in ip and "ct" not in agent  # one ciphertext, on the first
        assert "203.0.113.9" not in str((ip, agent)) and "console/1" not in str((ip, agent))
        assert personal.seal_actor("t1", "k1", None, None) == (None, None)  # nothing to seal
        only_agent = personal.seal_actor("t1", "k1", None, "cli/2")
        actors = [
            {"key_id": "k1", "ip": ip, "user_agent": agent},
            {"key_id": "k1", "ip": None, "user_agent": only_agent[1]},
            {"key_id": "k2", "ip": "198.51.100.1", "user_agent": "old/1"},  # recorded before sealing: as it is
        ]
        assert personal.open_actors("t1", actors) == [
            {"ip": "203.0.113.9", "user_agent": "console/1"},
            {"ip": None, "user_agent": "cli/2"},
            {"ip": "198.51.100.1", "user_agent": "old/1"},
        ]
        assert personal.open_actors("t2", actors[:1]) == [{"ip": None, "user_agent": None}]  # another chain's: no key
        assert personal.erase("t1", "apikey:k1") is not None
        assert personal.open_actors("t1", actors)[:2] == [{"ip": None, "user_agent": None}] * 2
    finally:
        control.close()


# The key table as it was before keys recorded their pseudonym scheme.
BEFORE_SCHEMES = """
/*postgres*/ CREATE TABLE gdpr_data_keys (
    tenant_id TEXT NOT NULL, subject TEXT NOT NULL, key_id TEXT NOT NULL, kek_id TEXT NOT NULL, wrapped BYTEA,
    created_at TEXT NOT NULL, erased_at TEXT, PRIMARY KEY (tenant_id, subject));
/*sqlite*/ CREATE TABLE gdpr_data_keys (
    tenant_id TEXT NOT NULL, subject TEXT NOT NULL, key_id TEXT NOT NULL, kek_id TEXT NOT NULL, wrapped BLOB,
    created_at TEXT NOT NULL, erased_at TEXT, PRIMARY KEY (tenant_id, subject))
"""


def test_keys_made_before_schemes_keep_their_pseudonyms_and_new_ones_take_blake2b(tmp_path: Path) -> None:
    """A key store of the version before: its keys read as HMAC-SHA256 (their pseudonyms unchanged),
    new persons' keys are BLAKE2b, and so is the new key of a person seen again after erasure.
    SQLite here, PostgreSQL in the test below."""
    _keys_before_schemes(SqliteDatabase(tmp_path / "eventstore.sqlite"), tmp_path)


def test_keys_made_before_schemes_on_postgres(pg_schema: str, tmp_path: Path) -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
    _keys_before_schemes(PostgresDatabase(DATABASE_URL, schema=pg_schema), tmp_path)


def _keys_before_schemes(db: Database, tmp_path: Path) -> None:
    try:
        db.migrate(BEFORE_SCHEMES)
        with db.transaction() as tx:  # as the version before wrote it
            tx.execute(
                "INSERT INTO gdpr_data_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                ("t1", "alice", "k-old", MASTER.id, MASTER.wrap(bytes(range(32))), "2025-01-01T00:00:00.000000Z"),
            )
        data_keys.migrate(db)
        data_keys.migrate(db)  # again, as every start does: nothing changes
        env = event_store_env(Settings(mode="embedded", data_dir=tmp_path))
        control = ControlPlane(env=env)
        try:
            personal = PersonalData(MASTER, db, control.recorder, control.mapper.to_domain_event)
            keys = personal.keys_for("t1", ["alice", "bob"], create=True)
            assert (keys["alice"].key_id, keys["alice"].scheme, keys["bob"].scheme) == (
                "k-old",
                data_keys.HMAC_SHA256,
                data_keys.BLAKE2B,
            )
            # The pseudonym alice's key gave before (tests/unit/test_gdpr_parts.py, OLD_SEALED).
            assert keys["alice"].pseudonym(b'"alice@example.com"') == "ps1_c112e02987256e79204d729c29152541"
            assert keys["bob"].pseudonym(b'"bob@example.com"').startswith("ps2_")
            assert personal.erase("t1", "alice") == "k-old"
            again = personal.keys_for("t1", ["alice"], create=True)["alice"]
            assert again.key_id != "k-old" and again.scheme == data_keys.BLAKE2B
            with db.transaction() as tx:
                assert {s: k.scheme for s, k in data_keys.live(tx, "t1", ["alice", "bob"]).items()} == {
                    "alice": data_keys.BLAKE2B,
                    "bob": data_keys.BLAKE2B,
                }
        finally:
            control.close()
    finally:
        db.close()


def test_start_up_tells_a_master_key_that_did_not_wrap_the_stored_keys(store: tuple[dict[str, str], Database]) -> None:
    """What `omni serve` checks before it serves (omni.cli): one stored key unwraps, or the reason."""
    env, db = store
    control = ControlPlane(env=env)
    try:
        right = PersonalData(MASTER, db, control.recorder, control.mapper.to_domain_event)
        assert right.master_key_problem() is None  # no key yet: any master key will do
        right.keys_for("t1", ["alice"], create=True)
        assert right.master_key_problem() is None
        other = PersonalData(MasterKey(b"f" * 32), db, control.recorder, control.mapper.to_domain_event)
        assert "wrapped by another master key" in (other.master_key_problem() or "")
        none = PersonalData(None, db, control.recorder, control.mapper.to_domain_event)
        assert "no GDPR master key" in (none.master_key_problem() or "")
        right.erase("t1", "alice")
        assert other.master_key_problem() is None  # no live key left to open
    finally:
        control.close()
