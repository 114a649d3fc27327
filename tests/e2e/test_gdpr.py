"""GDPR through HTTP, in both modes: data classes, sealing at the door, access export, erasure by
crypto-shredding. One setup per mode; the erasure part is the issue's "done when": after it the
original strings are nowhere (topics, event store, views, Redis, logs), a replay brings none back,
and the meters answer byte for byte as before."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from omni.bootstrap import Platform
from omni.settings import Mode
from schemas.envelope import decode
from stores import data_keys, schema
from streams.replay import Mode as ReplayMode
from streams.replay import Request
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_audit_trail import verified

DATA_CLASS = {"personal": ["$.data.email", "$.data.prompt"]}


async def finished(omni: Omni, key: str, request_id: str) -> dict[str, Any]:
    """The request once its job ended (the job runs in the background; then its steps are folded)."""
    await asyncio.wait_for(omni.platform.gdpr_jobs.wait(), timeout=20)
    await omni.settle()
    response = await omni.client.get(f"/v1/gdpr/requests/{request_id}", headers=omni.auth(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] in ("completed", "failed"), body
    return body


async def request(omni: Omni, key: str, subject: str, kind: str) -> dict[str, Any]:
    response = await omni.client.post("/v1/gdpr/requests", json={"subject": subject, "kind": kind}, headers=omni.auth(key))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "received"
    return await finished(omni, key, response.json()["id"])


def _holds(value: Any, needles: list[bytes]) -> list[bytes]:
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return [n for n in needles if n in value]
    if value is None or isinstance(value, int | float):
        return []
    return _holds(str(value), needles)


def _scan_sqlite(path: Any, needles: list[bytes]) -> list[str]:
    found = []
    with sqlite3.connect(path) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    found += [f"{path.name}:{table}: {n!r}" for n in _holds(value, needles)]
    return found


def _scan_postgres(omni: Omni, needles: list[bytes]) -> list[str]:
    import psycopg

    settings = omni.platform.settings
    found = []
    with psycopg.connect(settings.database_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (settings.database_schema,)
        )
        for (table,) in tables.fetchall():
            for row in conn.execute(f'SELECT * FROM "{settings.database_schema}"."{table}"').fetchall():
                for value in row:
                    found += [f"{table}: {n!r}" for n in _holds(value, needles)]
    return found


async def _scan_log(omni: Omni, needles: list[bytes]) -> list[str]:
    log = omni.platform.log
    found = []
    for topic in omni.platform.topics.all():
        for partition, end in (await log.end_offsets(topic)).items():
            offset = 0
            while offset < end:
                records = await log.read(topic, partition, offset, 1000)
                if not records:
                    break
                offset = records[-1].offset + 1
                for record in records:
                    raw = record.value + b"".join(name.encode() + value for name, value in record.headers)
                    found += [f"{topic}/{partition}@{record.offset}: {n!r}" for n in _holds(raw, needles)]
    return found


async def _scan_redis(omni: Omni, needles: list[bytes]) -> list[str]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(omni.platform.settings.redis_url)
    readers = {"string": "get", "hash": "hgetall", "list": "lrange", "set": "smembers", "zset": "zrange"}
    found = []
    try:
        keys = [key async for key in client.scan_iter(count=5000)]
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
            kinds = [kind.decode() for kind in await pipe.execute()]
        async with client.pipeline(transaction=False) as pipe:
            for key, kind in zip(keys, kinds, strict=True):
                reader = readers.get(kind, "exists")
                getattr(pipe, reader)(*((key, 0, -1) if reader in ("lrange", "zrange") else (key,)))
            values = await pipe.execute(raise_on_error=False)
        for key, value in zip(keys, values, strict=True):
            if isinstance(value, dict):
                value = b"".join(k + v for k, v in value.items())
            elif isinstance(value, list | set):
                value = b"".join(value)
            found += [f"redis {key!r}: {n!r}" for n in _holds(key, needles) + _holds(value, needles)]
    finally:
        await client.aclose()
    return found


async def in_views(omni: Omni, needles: list[bytes]) -> list[str]:
    if omni.platform.settings.mode is Mode.EMBEDDED:
        return _scan_sqlite(omni.platform.settings.data_dir / "views.sqlite", needles)
    return _scan_postgres(omni, needles)  # the views and the event store share the schema


async def everywhere(omni: Omni, needles: list[bytes]) -> list[str]:
    """Where any of `needles` is: every record of every topic, every row of the event store, the key
    store and the views, and (Kafka mode) every key and value in Redis."""
    found = await _scan_log(omni, needles)
    if omni.platform.settings.mode is Mode.EMBEDDED:
        data = omni.platform.settings.data_dir
        for name in ("eventstore.sqlite", "views.sqlite", "log.sqlite"):
            found += _scan_sqlite(data / name, needles)
    else:
        found += _scan_postgres(omni, needles)
        found += await _scan_redis(omni, needles)
    return found


async def audited(omni: Omni, key: str) -> list[dict[str, Any]]:
    response = await omni.client.get("/v1/audit", params={"limit": 500}, headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


async def test_personal_data_is_sealed_exported_and_erased_for_good(
    omni: Omni, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    mark = uuid.uuid4().hex[:10]
    alice_email, alice_prompt = f"alice-{mark}@example.com", f"alice's secret prompt {mark}"
    bob_email = f"bob-{mark}@example.com"
    needles = [alice_email.encode(), alice_prompt.encode(), mark.encode()]
    admin = omni.auth(ADMIN)

    # Data classes: admin only, paths that parse, read-your-writes.
    bad = await omni.client.put("/v1/data-classes/chat", json={"personal": ["data.email"]}, headers=admin)
    assert bad.status_code == 422, bad.text
    outside = await omni.client.put("/v1/data-classes/chat", json={"personal": ["$.source"]}, headers=admin)
    assert outside.status_code == 422, outside.text
    tenant_id, key = await omni.tenant("acme")
    _, other_key = await omni.tenant("globex")
    # The tenant's staff, from an address and a browser of their own: personal data of the audit trail.
    staff_ip, staff_agent = "203.0.113.77", f"acme-console/{mark}"
    staff = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=omni.app, client=(staff_ip, 4242)),
        base_url="http://omni.test",
        headers={"User-Agent": staff_agent, **omni.auth(key)},
    )
    actor_needles = [staff_ip.encode(), staff_agent.encode()]
    assert (await staff.post(f"/v1/tenants/{tenant_id}/keys", json={"label": "ci"})).status_code == 201
    assert (await staff.delete("/v1/keys/0000000000000000")).status_code == 404  # a refusal is audited too
    assert (await omni.client.put("/v1/data-classes/chat", json=DATA_CLASS, headers=omni.auth(key))).status_code == 403
    put = await omni.client.put("/v1/data-classes/chat", json=DATA_CLASS, headers=admin)
    assert put.status_code == 201, put.text
    assert put.json()["version"] == 1 and put.json()["definition"]["subject_property"] == "$.subject"
    await omni.settle()  # these tests' settings do not wait for the views (tests/e2e/test_read_your_writes.py does)
    got = await omni.client.get("/v1/data-classes/chat", headers=omni.auth(key))
    assert got.status_code == 200 and got.json()["definition"]["personal"] == DATA_CLASS["personal"], got.text
    assert (await omni.client.put("/v1/data-classes/chat", json=DATA_CLASS, headers=admin)).status_code == 200
    assert (await omni.client.put("/v1/data-classes/note", json={"personal": ["$.data.a"]}, headers=admin)).status_code == 201
    revised = await omni.client.put("/v1/data-classes/note", json={"personal": ["$.data.a", "$.data.b"]}, headers=admin)
    assert revised.status_code == 200 and revised.json()["version"] == 2, revised.text
    assert (await omni.client.get("/v1/data-classes/none", headers=admin)).status_code == 404

    await omni.meter(slug="chats", event_type="chat", aggregation="COUNT", group_by={"email": "$.data.email"})
    await omni.meter(slug="people", event_type="chat", aggregation="UNIQUE_COUNT", value_property="$.data.email")
    await omni.meter(slug="chat-tokens", event_type="chat", aggregation="SUM", value_property="$.data.tokens")
    events = [
        cloud_event(f"a{i}", type_="chat", subject="person-a", data={"email": alice_email, "prompt": alice_prompt, "tokens": 10})
        for i in range(3)
    ]
    events += [cloud_event("b0", type_="chat", subject="person-b", data={"email": bob_email, "prompt": "hi", "tokens": 5})]
    sent = await omni.send(key, events)
    assert sent.status_code == 202 and sent.json()["accepted"] == 4, sent.text
    await omni.settle()  # the meters, for consume
    consumed = await omni.client.post(  # a gateway's consume records usage too: sealed the same way
        "/v1/quotas/chat-tokens/consume",
        json={
            "amount": 10,
            "idempotency_key": "consume-1",
            "subject": "person-a",
            "data": {"email": alice_email, "prompt": alice_prompt},
        },
        headers=omni.auth(key),
    )
    assert consumed.status_code == 200, consumed.text
    await omni.settle()

    async def meters() -> list[str]:
        answers = []
        for slug, params in (("chats", {"group_by": "email"}), ("people", {}), ("chat-tokens", {"group_by": "subject"})):
            response = await omni.client.get(f"/v1/meters/{slug}/query", params=params, headers=omni.auth(key))
            assert response.status_code == 200, response.text
            answers.append(response.text)
        return answers

    before = await meters()
    chats = await omni.query(key, "chats", group_by="email")
    assert sorted(int(row["value"]) for row in chats) == [1, 4]  # grouped by pseudonym: one group per person
    assert all(row["group_by"]["email"].startswith("ps2_") for row in chats)
    assert [int(row["value"]) for row in await omni.query(key, "people")] == [2]

    # Access: the export holds the person's events, opened, and nobody else's.
    access = await request(omni, key, "person-a", "access")
    assert access["status"] == "completed", access
    assert [s["status"] for s in access["steps"]] == ["received", "running", "completed"]
    export = await omni.client.get(access["export"], headers=omni.auth(key))
    assert export.status_code == 200, export.text
    document = export.json()
    assert document["subject"] == "person-a" and len(document["events"]) == 4
    assert {e["data"]["email"] for e in document["events"]} == {alice_email}
    assert {e["data"]["prompt"] for e in document["events"]} == {alice_prompt}
    assert bob_email not in export.text
    # The export is kept sealed under the person's key: no view holds the values, even while it
    # exists (an erasure that deletes it could leave its bytes in a journal); the scan does find
    # what is there in clear, the person's id.
    assert await in_views(omni, needles) == []
    assert [f for f in await in_views(omni, [b"person-a"]) if "gdpr_exports" in f]
    # The view rows about the person are opened too: what the meters group and count by a
    # pseudonym shows as the value it stands for.
    rows = {r["meter"]: r for r in document["views"]["meters"]}
    assert rows["chats"]["group"] == {"email": alice_email} and rows["chats"]["count"] == 4  # the consume too
    assert rows["people"]["uniques"] == [alice_email]
    assert rows["chat-tokens"]["total"] == "40" and "uniques" not in rows["chat-tokens"]
    # Another tenant's request is not found; an unknown person gets an empty export.
    assert (await omni.client.get(f"/v1/gdpr/requests/{access['id']}", headers=omni.auth(other_key))).status_code == 404
    assert (await omni.client.get(f"/v1/gdpr/requests/{access['id']}/export", headers=omni.auth(other_key))).status_code == 404
    nobody = await request(omni, other_key, "person-a", "portability")
    assert (await omni.client.get(nobody["export"], headers=omni.auth(other_key))).json()["events"] == []

    # Erasure: the key goes, then nothing anywhere holds the strings; a second erasure still answers.
    erasure = await request(omni, key, "person-a", "erasure")
    assert erasure["status"] == "completed" and "erased" in erasure["steps"][-1]["step"], erasure
    assert erasure["deadline"] > erasure["received_at"]
    again = await request(omni, key, "person-a", "erasure")
    assert again["status"] == "completed" and "nothing to erase" in again["steps"][-1]["step"], again
    assert (await omni.client.get(access["export"], headers=omni.auth(key))).status_code == 410  # the export went too
    was = await omni.client.get(f"/v1/gdpr/requests/{access['id']}", headers=omni.auth(key))
    assert was.json()["status"] == "completed" and was.json()["export"] is None, "no link to what is gone"
    no_export = await omni.client.get(f"/v1/gdpr/requests/{erasure['id']}/export", headers=omni.auth(key))
    assert no_export.status_code == 409 and "is an erasure request" in no_export.json()["detail"], no_export.text
    after = await request(omni, key, "person-a", "access")
    emptied = (await omni.client.get(after["export"], headers=omni.auth(key))).json()
    assert len(emptied["events"]) == 4 and all(
        e["data"]["email"] is None and e["data"]["prompt"] is None for e in emptied["events"]
    )
    assert await meters() == before  # usage stays, unlinked from the person

    # The staff's IP address and user agent: sealed in the chain, opened for the tenant, until the
    # actor (its API key, as the data subject `apikey:<key id>`) is erased; the chain still verifies.
    staff_entries = [e for e in await audited(omni, key) if e["action"] in ("api_key.issue", "api_key.revoke")]
    assert [e["opened_actor"] for e in staff_entries] == [{"ip": staff_ip, "user_agent": staff_agent}] * 2
    assert all(e["actor"]["ip"]["ps"].startswith("ps2_") for e in staff_entries)
    actor_access = await request(omni, key, f"apikey:{key.split('_')[1]}", "access")
    actor_export = (await omni.client.get(actor_access["export"], headers=omni.auth(key))).json()
    assert {"ip": staff_ip, "user_agent": staff_agent} in [e["opened_actor"] for e in actor_export["views"]["audit"]]
    actor = await request(omni, key, f"apikey:{key.split('_')[1]}", "erasure")  # its export goes too
    assert actor["status"] == "completed" and "erased" in actor["steps"][-1]["step"], actor
    await staff.aclose()
    staff_entries = [e for e in await audited(omni, key) if e["action"] in ("api_key.issue", "api_key.revoke")]
    assert [e["opened_actor"] for e in staff_entries] == [{"ip": None, "user_agent": None}] * 2
    assert await everywhere(omni, needles + actor_needles) == []  # the person's and the actor's
    export = await omni.client.get("/v1/audit/export", headers=omni.auth(key))
    pem = (await omni.client.get("/v1/audit/public-key", headers=omni.auth(key))).text
    assert export.status_code == 200 and staff_ip.encode() not in export.content
    code, said = verified(tmp_path, export.content, pem)
    assert code == 0, said

    # A replay of the whole log into empty views resurrects nothing, and the meters are the same.
    with omni.platform.db.transaction() as tx:
        dropped = set(re.findall(r"DROP TABLE IF EXISTS (\w+)", schema.SCHEMA))
        for table in set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema.SCHEMA)) - dropped:
            tx.execute(f"DELETE FROM {table}")
    await omni.settle()
    assert await meters() == before
    assert await in_views(omni, needles + actor_needles) == []
    await breaches(omni)
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert not [n for n in needles + actor_needles if n.decode() in logged]
    assert tenant_id


async def breaches(omni: Omni) -> None:
    """The breach register: 72 hours from detection; past them, one overdue notification, ever."""
    admin = omni.auth(ADMIN)
    detected = datetime.now(UTC) - timedelta(hours=73)
    late = await omni.client.post(
        "/v1/gdpr/breaches", json={"detected_at": detected.isoformat(), "scope": "a backup bucket", "subjects": 12}, headers=admin
    )
    assert late.status_code == 201, late.text
    fresh = await omni.client.post(
        "/v1/gdpr/breaches", json={"detected_at": datetime.now(UTC).isoformat(), "scope": "a laptop"}, headers=admin
    )
    assert fresh.status_code == 201, fresh.text
    assert (
        await omni.client.post("/v1/gdpr/breaches", json={"detected_at": "yesterday", "scope": "x"}, headers=admin)
    ).status_code == 422
    for _ in range(2):  # settled twice: the notice is emitted once
        await omni.settle()
    shown = (await omni.client.get(f"/v1/gdpr/breaches/{late.json()['id']}", headers=admin)).json()
    assert shown["status"] == "overdue" and shown["overdue_notice_at"] is not None, shown
    assert datetime.fromisoformat(shown["deadline"]) == datetime.fromisoformat(shown["detected_at"]) + timedelta(hours=72)
    notices = []
    topic = omni.platform.topics.notifications
    for partition, end in (await omni.platform.log.end_offsets(topic)).items():
        for record in await omni.platform.log.read(topic, partition, 0, end):
            if b"omni.gdpr.breach_overdue" in record.value:
                notices.append(orjson.loads(record.value)["data"]["breach_id"])
    assert notices == [late.json()["id"]]
    notified = await omni.client.post(f"/v1/gdpr/breaches/{fresh.json()['id']}/notified", headers=admin)
    assert notified.status_code == 200, notified.text
    await omni.settle()
    listed = (await omni.client.get("/v1/gdpr/breaches", headers=admin)).json()["data"]
    assert {b["id"]: b["status"] for b in listed} == {late.json()["id"]: "overdue", fresh.json()["id"]: "notified"}
    overdue = (await omni.client.get("/v1/gdpr/breaches", params={"status": "overdue"}, headers=admin)).json()["data"]
    assert [b["id"] for b in overdue] == [late.json()["id"]]
    assert (await omni.client.get(f"/v1/gdpr/breaches/{uuid.uuid4()}", headers=admin)).status_code == 404

    # The GDPR views rebuild from the log as they are; a swap makes the rebuild live (a row edited
    # behind the log's back as it was), and the overdue notice, which only the live views had
    # marked, is neither emitted again nor marked anew.
    replayer = omni.platform.replays.replayer
    assert (await replayer.run(Request(("gdpr",), ReplayMode.DIFF))).differences == []
    with omni.platform.db.transaction() as tx:
        tx.execute("UPDATE gdpr_breaches SET scope = 'edited' WHERE id = ?", (late.json()["id"],))
    assert len((await replayer.run(Request(("gdpr",), ReplayMode.DIFF))).differences) == 2
    assert (await replayer.run(Request(("gdpr",), ReplayMode.SWAP))).swapped
    for _ in range(2):
        await omni.settle()
    assert (await omni.client.get("/v1/gdpr/breaches", headers=admin)).json()["data"] == listed
    again = []
    for partition, end in (await omni.platform.log.end_offsets(topic)).items():
        again += [r for r in await omni.platform.log.read(topic, partition, 0, end) if b"omni.gdpr.breach_overdue" in r.value]
    assert len(again) == 1


def test_kafka_mode_refuses_to_serve_without_a_master_key(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from omni import cli

    monkeypatch.delenv("OMNI_GDPR_MASTER_KEY", raising=False)
    monkeypatch.setattr(cli, "platform_when_reachable", lambda settings: pytest.fail("built without a master key"))
    runner = CliRunner()
    refused = runner.invoke(cli.app, ["serve", "--port", "1"], env={"OMNI_MODE": "kafka", "OMNI_DATA_DIR": str(tmp_path)})
    assert refused.exit_code == 2 and "OMNI_GDPR_MASTER_KEY is not set" in refused.output, refused.output
    bad = runner.invoke(cli.app, ["serve"], env={"OMNI_MODE": "kafka", "OMNI_GDPR_MASTER_KEY": "c2hvcnQ="})
    assert bad.exit_code == 2 and "not 32 bytes" in bad.output, bad.output
    printed = runner.invoke(cli.app, ["gdpr-master-key"])
    assert printed.exit_code == 0 and len(base64.b64decode(printed.output.strip())) == 32


def test_serve_refuses_to_start_with_a_master_key_other_than_the_one_that_wrapped_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data directory whose data keys were wrapped by one master key, started with another: `omni
    serve` exits 2 naming the setting, instead of serving 503 for every known person for good."""
    from typer.testing import CliRunner

    import api.server
    from omni import cli
    from omni.bootstrap import build
    from omni.personal_data import generate_master_key
    from tests.e2e.conftest import GDPR_MASTER_KEY, embedded_settings

    data = tmp_path / "data"
    platform = build(embedded_settings(data, gdpr_master_key=GDPR_MASTER_KEY))
    platform.personal.keys_for("tenant-a", ["customer-42"], create=True)
    asyncio.run(platform.stop())
    served: list[bool] = []
    monkeypatch.setattr(api.server, "serve_app", lambda *args, **kwargs: served.append(True))
    monkeypatch.delenv("OMNI_GDPR_MASTER_KEY", raising=False)
    runner = CliRunner()
    env = {"OMNI_MODE": "embedded", "OMNI_DATA_DIR": str(data), "OMNI_ADMIN_KEY": ADMIN}
    wrong = runner.invoke(cli.app, ["serve"], env={**env, "OMNI_GDPR_MASTER_KEY": generate_master_key()})
    assert wrong.exit_code == 2 and served == [], wrong.output
    assert "does not open the data keys already stored" in wrong.output and "OMNI_GDPR_MASTER_KEY" in wrong.output
    generated = runner.invoke(cli.app, ["serve"], env=env)  # not set: the data directory's own, another one
    assert generated.exit_code == 2 and "gdpr_master_key" in generated.output and served == [], generated.output
    right = runner.invoke(cli.app, ["serve"], env={**env, "OMNI_GDPR_MASTER_KEY": GDPR_MASTER_KEY})
    assert right.exit_code == 0 and served == [True], right.output


async def control_events(platform: Platform, event_type: bytes) -> list[dict[str, Any]]:
    found = []
    topic = platform.topics.control
    for partition, end in (await platform.log.end_offsets(topic)).items():
        for record in await platform.log.read(topic, partition, 0, end):
            if event_type in record.value:
                found.append(orjson.loads(record.value)["data"])
    return found


async def test_retention_shreds_the_keys_of_persons_idle_longer_than_the_period(omni: Omni) -> None:
    """A tenant's retention period: the sweeper (at an instant the test chooses) erases each person
    whose last event is older, as an erasure request with the reason `retention`, once; the others
    keep their keys, and the usage totals stay as they were."""
    from commands.control_plane import CommandContext
    from stores import data_keys

    mark = uuid.uuid4().hex[:10]
    tenant_id, key = await omni.tenant("acme")
    other_id, other_key = await omni.tenant("globex")
    auth = omni.auth(key)
    assert (await omni.client.put("/v1/data-classes/chat", json=DATA_CLASS, headers=omni.auth(ADMIN))).status_code == 201
    await omni.meter(slug="chat-tokens", event_type="chat", aggregation="SUM", value_property="$.data.tokens")
    assert (await omni.client.get("/v1/gdpr/retention", headers=auth)).json() == {
        "personal_data_days": None,
        "version": 0,
        "updated_at": None,
    }
    assert (await omni.client.put("/v1/gdpr/retention", json={"personal_data_days": 0}, headers=auth)).status_code == 422
    assert (await omni.client.put("/v1/gdpr/retention", json={"days": 30}, headers=auth)).status_code == 422
    put = await omni.client.put("/v1/gdpr/retention", json={"personal_data_days": 30}, headers=auth)
    assert put.status_code == 201 and put.json()["personal_data_days"] == 30 and put.json()["version"] == 1, put.text
    assert (await omni.client.put("/v1/gdpr/retention", json={"personal_data_days": 30}, headers=auth)).status_code == 200
    await omni.settle()
    assert (await omni.client.get("/v1/gdpr/retention", headers=auth)).json()["personal_data_days"] == 30
    assert (await omni.client.get("/v1/gdpr/retention", headers=omni.auth(other_key))).json()["version"] == 0

    # Two persons seen 40 days ago, one of them again now; the other tenant's idle person has no period.
    now = datetime.now(UTC)
    omni.platform.personal.clock = lambda: now - timedelta(days=40)

    def chat(event_id: str, person: str) -> dict[str, Any]:
        return cloud_event(event_id, type_="chat", subject=person, data={"email": f"{person}-{mark}@example.com", "tokens": 7})

    assert (await omni.send(key, [chat("o1", "old"), chat("o2", "old"), chat("r1", "returning")])).status_code == 202
    assert (await omni.send(other_key, [chat("g1", "old")])).status_code == 202
    omni.platform.personal.clock = lambda: now
    omni.platform.personal.cache.forget([(tenant_id, "returning")])  # as if its cached key had expired
    assert (await omni.send(key, [chat("r2", "returning")])).status_code == 202
    await omni.settle()
    before = (await omni.client.get("/v1/meters/chat-tokens/query", params={"group_by": "subject"}, headers=auth)).text

    assert await omni.platform.retention.sweep_once(now) == 1
    assert await omni.platform.retention.sweep_once(now) == 0  # swept once: nothing is erased twice
    await omni.settle()
    with omni.platform.personal.keys_db.transaction() as tx:
        assert set(data_keys.live(tx, tenant_id, ["old", "returning"])) == {"returning"}
        assert set(data_keys.live(tx, other_id, ["old"])) == {"old"}
    erased = await control_events(omni.platform, b"omni.gdpr.subject_erased")
    assert [(e["tenant_id"], e["subject"], e["reason"]) for e in erased] == [(tenant_id, "old", "retention")]
    audited = (await omni.client.get("/v1/audit", params={"action": "gdpr.erasure.received"}, headers=auth)).json()["data"]
    assert [a["reason"] for a in audited] == ["retention: no event for 30 days"]
    request_id = audited[0]["resource"].removeprefix("gdpr/requests/")
    shown = (await omni.client.get(f"/v1/gdpr/requests/{request_id}", headers=auth)).json()
    assert shown["subject"] == "old" and shown["kind"] == "erasure" and shown["status"] == "completed", shown
    assert [s["status"] for s in shown["steps"]] == ["received", "running", "completed"]
    assert shown["steps"][0]["step"] == "received: retention" and erased[0]["key_id"] in shown["steps"][-1]["step"]
    sweeper = CommandContext(tenant_id=tenant_id, key_id="retention")
    again = await omni.platform.run_command(
        omni.platform.control.receive_retention_erasure, sweeper, tenant_id, "old", erased[0]["key_id"], 30
    )
    assert str(again.id) == request_id and again.status == "completed"  # its id is the key's: recorded once
    after = (await omni.client.get("/v1/meters/chat-tokens/query", params={"group_by": "subject"}, headers=auth)).text
    assert after == before  # the usage stays, unlinked from the person
    # Past the period for the returning person too, and for the actors of the tenant's audit trail
    # (the admin's key and the tenant's, whose IP addresses are sealed there); none for the other tenant.
    actors = ["apikey:admin", f"apikey:{key.split('_')[1]}"]
    assert await omni.platform.retention.sweep_once(now + timedelta(days=31)) == 3
    with omni.platform.personal.keys_db.transaction() as tx:
        assert data_keys.live(tx, tenant_id, ["returning", *actors]) == {}
        assert set(data_keys.live(tx, other_id, ["old", "apikey:admin"])) == {"old", "apikey:admin"}


async def test_the_admin_acts_for_the_platforms_subjects_its_own_actor_and_a_named_tenants(omni: Omni, tmp_path: Path) -> None:
    """The admin's key is a data subject of `_platform` (`apikey:admin`, the actor of platform-wide
    commands): the admin exports and erases it like any person's, and the chain still verifies. With
    `?tenant=`, the admin acts for a tenant's subjects; a tenant key names no other tenant."""
    mark = uuid.uuid4().hex[:10]
    admin_ip, admin_agent = "198.51.100.9", f"ops-console/{mark}"
    operator = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=omni.app, client=(admin_ip, 4243)),
        base_url="http://omni.test",
        headers={"User-Agent": admin_agent, **omni.auth(ADMIN)},
    )
    tenant_id, key = await omni.tenant("acme")
    _, other_key = await omni.tenant("globex")
    assert (await operator.put("/v1/data-classes/chat", json=DATA_CLASS)).status_code == 201  # on `_platform`
    await omni.settle()

    async def own_entries() -> list[dict[str, Any]]:
        found = (await operator.get("/v1/audit", params={"action": "data_class.put"})).json()["data"]
        assert len(found) == 1, found
        return found

    assert [e["opened_actor"] for e in await own_entries()] == [{"ip": admin_ip, "user_agent": admin_agent}]

    async def made(client: httpx.AsyncClient, subject: str, kind: str, **params: str) -> dict[str, Any]:
        posted = await client.post("/v1/gdpr/requests", params=params, json={"subject": subject, "kind": kind})
        assert posted.status_code == 202, posted.text
        await asyncio.wait_for(omni.platform.gdpr_jobs.wait(), timeout=20)
        await omni.settle()
        shown = await client.get(posted.headers["Location"])
        assert shown.status_code == 200 and shown.json()["status"] == "completed", shown.text
        return shown.json()  # type: ignore[no-any-return]

    # The platform's subjects, the default: the admin's own actor, exported, then erased.
    access = await made(operator, "apikey:admin", "access")
    export = (await operator.get(access["export"])).json()
    assert export["tenant_id"] == "_platform"
    assert {"ip": admin_ip, "user_agent": admin_agent} in [e["opened_actor"] for e in export["views"]["audit"]]
    erasure = await made(operator, "apikey:admin", "erasure", tenant="_platform")
    assert erasure["steps"][-1]["step"].startswith("data key "), erasure
    assert (await operator.get(access["export"])).status_code == 410
    assert [e["opened_actor"] for e in await own_entries()] == [{"ip": None, "user_agent": None}]
    chain = await operator.get("/v1/audit/export")
    assert chain.status_code == 200 and admin_ip.encode() not in chain.content
    code, said = verified(tmp_path, chain.content, (await operator.get("/v1/audit/public-key")).text)
    assert code == 0, said
    assert (await omni.client.get(f"/v1/gdpr/requests/{erasure['id']}", headers=omni.auth(key))).status_code == 404

    # A named tenant's subject: the tenant's request, shown to the tenant too; not `_platform`'s.
    for_tenant = await made(operator, "person-a", "access", tenant=tenant_id)
    assert for_tenant["export"] == f"/v1/gdpr/requests/{for_tenant['id']}/export?tenant={tenant_id}"
    assert (await operator.get(for_tenant["export"])).json()["tenant_id"] == tenant_id
    assert (await omni.client.get(f"/v1/gdpr/requests/{for_tenant['id']}", headers=omni.auth(key))).status_code == 200
    assert (await operator.get(f"/v1/gdpr/requests/{for_tenant['id']}")).status_code == 404
    for unknown in (str(uuid.uuid4()), "not-a-tenant"):
        refused = await operator.post("/v1/gdpr/requests", params={"tenant": unknown}, json={"subject": "x", "kind": "access"})
        assert refused.status_code == 404, refused.text
    # A tenant key: its own tenant named or not; another's, or `_platform`, is not found.
    own = await omni.client.post(
        "/v1/gdpr/requests", params={"tenant": tenant_id}, json={"subject": "p", "kind": "access"}, headers=omni.auth(key)
    )
    assert own.status_code == 202 and own.headers["Location"] == f"/v1/gdpr/requests/{own.json()['id']}", own.text
    for elsewhere in ("_platform", tenant_id):
        response = await omni.client.post(
            "/v1/gdpr/requests",
            params={"tenant": elsewhere},
            json={"subject": "p", "kind": "erasure"},
            headers=omni.auth(other_key),
        )
        assert response.status_code == 404, (elsewhere, response.text)
    await asyncio.wait_for(omni.platform.gdpr_jobs.wait(), timeout=20)

    # A retention period for the platform's subjects: the admin's actor, idle past it, is shredded.
    assert (await operator.put("/v1/gdpr/retention", json={"personal_data_days": 30})).status_code == 201
    assert (await omni.client.get("/v1/gdpr/retention", headers=omni.auth(key))).json()["version"] == 0
    assert (await operator.get("/v1/gdpr/retention", params={"tenant": tenant_id})).json()["version"] == 0
    await omni.settle()
    assert (await operator.get("/v1/gdpr/retention")).json()["personal_data_days"] == 30
    assert await omni.platform.retention.sweep_once(datetime.now(UTC) + timedelta(days=31)) == 1
    with omni.platform.personal.keys_db.transaction() as tx:
        assert data_keys.live(tx, "_platform", ["apikey:admin"]) == {}
        assert set(data_keys.live(tx, tenant_id, ["apikey:admin"])) == {"apikey:admin"}  # acme has no period
    await operator.aclose()


async def test_a_breach_detected_in_the_future_is_refused_and_one_on_the_log_stops_no_view(omni: Omni) -> None:
    """A detection beyond the events' clock skew (5 minutes) ahead is refused with 422 and nothing
    is recorded; one already on the log (recorded before the command refused it) folds with the
    latest deadline, never overdue, and the catalog goes on: a tenant created after it is read."""
    from commands.control_plane import CommandContext
    from schemas.gdpr import BreachBody

    admin = omni.auth(ADMIN)
    for detected in ("9999-12-30T00:00:00Z", (datetime.now(UTC) + timedelta(days=365)).isoformat()):
        refused = await omni.client.post("/v1/gdpr/breaches", json={"detected_at": detected, "scope": "typo"}, headers=admin)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "in the future" in refused.json()["detail"], refused.json()
    skewed = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()  # within the skew: taken
    taken = await omni.client.post("/v1/gdpr/breaches", json={"detected_at": skewed, "scope": "a clock"}, headers=admin)
    assert taken.status_code == 201, taken.text
    await omni.settle()
    listed = (await omni.client.get("/v1/gdpr/breaches", headers=admin)).json()["data"]
    assert [b["scope"] for b in listed] == ["a clock"]
    assert await control_events(omni.platform, b'"typo"') == []

    # A log from before the refusal may hold one: recorded here behind the route's back.
    body = BreachBody.model_validate({"detected_at": "9999-12-30T00:00:00Z", "scope": "typo"})
    await asyncio.to_thread(omni.platform.control.record_breach, CommandContext(), body, timedelta.max)
    tenant_id, _ = await omni.tenant("after-the-breach")
    await omni.settle()
    tenant = await omni.client.get(f"/v1/tenants/{tenant_id}", headers=admin)
    assert tenant.status_code == 200 and tenant.json()["name"] == "after-the-breach", tenant.text
    typo = [b for b in (await omni.client.get("/v1/gdpr/breaches", headers=admin)).json()["data"] if b["scope"] == "typo"]
    assert [(b["deadline"], b["status"]) for b in typo] == [("9999-12-31T23:59:59.999999Z", "open")]
    assert (await omni.platform.replays.replayer.run(Request(("gdpr",), ReplayMode.DIFF))).differences == []


async def test_a_person_named_under_data_has_an_id_a_gdpr_request_takes(omni: Omni) -> None:
    """A data class naming the person by a value under `$.data`: an id longer than a GDPR request
    takes (256 characters) is refused at admission, no key made; one of 256 is sealed, and that
    person's request is taken."""
    admin = omni.auth(ADMIN)
    body = {"personal": ["$.data.email"], "subject_property": "$.data.user_id"}
    assert (await omni.client.put("/v1/data-classes/signup", json=body, headers=admin)).status_code == 201
    tenant_id, key = await omni.tenant("acme")
    await omni.settle()
    longest, too_long = "u" * 256, "v" * 257
    events = [
        cloud_event(f"e-{n}", type_="signup", data={"user_id": person, "email": f"{n}@example.com"})
        for n, person in enumerate((longest, too_long))
    ]
    refused = await omni.send(key, events)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"] == [
        {
            "index": 1,
            "id": "e-1",
            "reasons": [
                "the person its data class names ($.data.user_id) is 257 characters long; "
                "a person's id may be at most 256, as a GDPR request takes it"
            ],
        }
    ]
    assert await asyncio.to_thread(omni.platform.personal.keys_for, tenant_id, [longest, too_long], create=False) == {}
    assert (await omni.send(key, events[:1])).status_code == 202
    await omni.settle()
    assert list(await asyncio.to_thread(omni.platform.personal.keys_for, tenant_id, [longest], create=False)) == [longest]
    access = await request(omni, key, longest, "access")
    assert access["status"] == "completed", access
    export = (await omni.client.get(access["export"], headers=omni.auth(key))).json()
    assert "0@example.com" in orjson.dumps(export).decode()
    too_long_request = {"subject": too_long, "kind": "access"}
    assert (await omni.client.post("/v1/gdpr/requests", json=too_long_request, headers=omni.auth(key))).status_code == 422


async def test_every_event_type_admission_takes_can_have_a_data_class(omni: Omni) -> None:
    """Admission and meters take any `type` of 1 to 256 characters without NUL: a data class can be
    declared for each, a `/` in it sent as is or percent-encoded, and events of that type are sealed."""
    admin = omni.auth(ADMIN)
    tenant_id, key = await omni.tenant("acme")
    types = {"x+y": "x%2By", "com.example/chat v2": "com.example%2Fchat%20v2", "a/b": "a/b", "é": "%C3%A9", "t" * 256: "t" * 256}
    for n, (event_type, in_url) in enumerate(types.items()):
        put = await omni.client.put(f"/v1/data-classes/{in_url}", json={"personal": ["$.data.email"]}, headers=admin)
        assert put.status_code == 201 and put.json()["event_type"] == event_type, put.text
        await omni.meter(slug=f"emails-{n}", event_type=event_type, aggregation="COUNT", group_by={"email": "$.data.email"})
    await omni.settle()
    for event_type, in_url in types.items():
        got = await omni.client.get(f"/v1/data-classes/{in_url}", headers=omni.auth(key))
        assert got.status_code == 200 and got.json()["event_type"] == event_type, got.text
    listed = (await omni.client.get("/v1/data-classes", headers=admin)).json()["data"]
    assert sorted(c["event_type"] for c in listed) == sorted(types)
    for refused in ("t" * 257, "a%00b"):
        assert (await omni.client.put(f"/v1/data-classes/{refused}", json=DATA_CLASS, headers=admin)).status_code == 422
    events = [
        cloud_event(f"e-{n}", type_=event_type, subject="customer-42", data={"email": "someone@example.com"})
        for n, event_type in enumerate(types)
    ]
    assert (await omni.send(key, events)).status_code == 202
    await omni.settle()
    for n, event_type in enumerate(types):
        rows = await omni.query(key, f"emails-{n}", group_by="email")
        assert [r["group_by"]["email"][:4] for r in rows] == ["ps2_"], (event_type, rows)
    assert tenant_id


async def test_an_erased_key_leaves_no_copy_in_any_file_of_the_data_directory(tmp_path: Path) -> None:
    """Embedded mode keeps the data keys in SQLite, whose write-ahead log keeps every version of a
    page until a checkpoint resets it: the wrapped key an erasure deleted stayed readable there, and
    the master key that opens it sits in the same directory."""
    from tests.e2e.conftest import embedded_settings, served

    async with served(embedded_settings(tmp_path / "data")) as omni:
        assert (await omni.client.put("/v1/data-classes/chat", json=DATA_CLASS, headers=omni.auth(ADMIN))).status_code == 201
        await omni.settle()
        _, key = await omni.tenant("acme")
        events = [cloud_event(f"e{i}", type_="chat", subject="person-a", data={"email": "a@example.com"}) for i in range(3)]
        assert (await omni.send(key, events)).status_code == 202
        with omni.platform.personal.keys_db.transaction() as tx:
            ((wrapped,),) = tx.execute("SELECT wrapped FROM gdpr_data_keys WHERE subject='person-a'")
        wrapped = bytes(wrapped)
        # Enough commits after the key's that the log holds it in older frames, as a running server's does.
        for i in range(20):
            assert (await omni.send(key, [cloud_event(f"o{i}", type_="chat", subject=f"other-{i}", data={})])).status_code == 202

        def files_holding() -> list[str]:
            return [p.name for p in sorted((tmp_path / "data").rglob("*")) if p.is_file() and wrapped in p.read_bytes()]

        assert files_holding(), "the key is stored before its erasure"
        erasure = await request(omni, key, "person-a", "erasure")
        assert erasure["status"] == "completed" and "erased" in erasure["steps"][-1]["step"], erasure
        assert files_holding() == []


async def test_an_event_shaped_otherwise_than_its_data_class_is_sealed_where_its_shape_departs(tmp_path: Path) -> None:
    """A path running on through an object the event holds as a string, a list or no object at all:
    the value the event holds there is sealed whole (it was kept in clear, and survived erasure)."""
    from tests.e2e.conftest import embedded_settings, served

    mark = uuid.uuid4().hex[:10]
    clear = [f"as text {mark}", f"tag {mark}", f"in a list {mark}", f"the whole data {mark}"]
    async with served(embedded_settings(tmp_path / "data")) as omni:
        body = {"personal": ["$.data.profile.name", "$.data.profile.email", "$.data.tags", "$.data.email"]}
        assert (await omni.client.put("/v1/data-classes/chat", json=body, headers=omni.auth(ADMIN))).status_code == 201
        await omni.settle()
        _, key = await omni.tenant("acme")
        events = [
            cloud_event("e1", type_="chat", subject="person-b", data={"tokens": 1, "profile": clear[0], "tags": clear[1]}),
            cloud_event("e2", type_="chat", subject="person-b", data={"tokens": 2, "profile": [{"name": clear[2]}]}),
            cloud_event("e3", type_="chat", subject="person-b", data=clear[3]),
            cloud_event("e4", type_="chat", subject="person-b", data={"tokens": 4, "profile": {"name": "n", "age": 40}}),
        ]
        assert (await omni.send(key, events)).status_code == 202
        await omni.settle()
        assert await everywhere(omni, [c.encode() for c in clear]) == []
        access = await request(omni, key, "person-b", "access")
        document = (await omni.client.get(access["export"], headers=omni.auth(key))).json()
        assert [e["data"] for e in sorted(document["events"], key=lambda e: e["id"])] == [
            {"tokens": 1, "profile": clear[0], "tags": clear[1]},
            {"tokens": 2, "profile": [{"name": clear[2]}]},
            clear[3],
            {"tokens": 4, "profile": {"name": "n", "age": 40}},  # shaped as declared: the name alone sealed
        ]
        topic = omni.platform.topics.usage
        stored = [
            decode(r.value)
            for partition, end in (await omni.platform.log.end_offsets(topic)).items()
            for r in await omni.platform.log.read(topic, partition, 0, end)
        ]
        fourth = next(e for e in stored if e.source_id == "e4")
        assert fourth.data["profile"]["age"] == 40 and "ct" in fourth.data["profile"]["name"]

        erasure = await request(omni, key, "person-b", "erasure")
        assert erasure["status"] == "completed", erasure
        after = await request(omni, key, "person-b", "access")
        emptied = (await omni.client.get(after["export"], headers=omni.auth(key))).json()
        assert [e["data"] for e in sorted(emptied["events"], key=lambda e: e["id"])] == [
            {"tokens": 1, "profile": None, "tags": None},
            {"tokens": 2, "profile": None},
            None,
            {"tokens": 4, "profile": {"name": None, "age": 40}},
        ]
        assert await everywhere(omni, [c.encode() for c in clear]) == []


async def test_a_tenant_acts_for_its_own_keys_as_actors_only_never_the_admins_or_another_tenants(omni: Omni) -> None:
    """The admin's key acted in every tenant's chain (it created the tenant): as an actor there it is
    the operator's personal data, which a tenant reads sealed and may neither export nor erase."""
    _, key = await omni.tenant("acme")
    _, other_key = await omni.tenant("globex")
    own = f"apikey:{key.split('_')[1]}"
    for subject in ("apikey:admin", f"apikey:{other_key.split('_')[1]}", "apikey:0000000000000000"):
        for kind in ("access", "erasure"):
            refused = await omni.client.post("/v1/gdpr/requests", json={"subject": subject, "kind": kind}, headers=omni.auth(key))
            assert refused.status_code == 404 and refused.headers["content-type"] == "application/problem+json", refused.text
    assert (await request(omni, key, own, "access"))["status"] == "completed"
    trail = await audited(omni, key)
    assert [e["reason"][:3] for e in trail if e["action"] == "gdpr.erasure.received" and e["outcome"] != "accepted"] == [
        "404"
    ] * 3
    # The admin acts for the operator: the platform's own subjects, or a tenant's named by ?tenant=.
    admin = await omni.client.post(
        "/v1/gdpr/requests", json={"subject": "apikey:admin", "kind": "access"}, headers=omni.auth(ADMIN)
    )
    assert admin.status_code == 202, admin.text


async def test_a_meter_cannot_add_or_compare_a_value_its_data_class_seals(tmp_path: Path) -> None:
    """A sealed value is no number: a SUM (MAX, MIN, AVG, LATEST) over one counted nothing, silently.
    Defining such a meter, or declaring personal a path such a meter reads, is refused."""
    from tests.e2e.conftest import embedded_settings, served

    async with served(embedded_settings(tmp_path / "data")) as omni:
        admin = omni.auth(ADMIN)
        body = {"personal": ["$.data.email", "$.data.profile"]}
        assert (await omni.client.put("/v1/data-classes/chat", json=body, headers=admin)).status_code == 201
        await omni.settle()
        for aggregation in ("SUM", "MAX", "MIN", "AVG", "LATEST"):
            meter = {"slug": f"age-{aggregation.lower()}", "event_type": "chat", "aggregation": aggregation}
            refused = await omni.client.post("/v1/meters", json={**meter, "value_property": "$.data.profile.age"}, headers=admin)
            assert refused.status_code == 422, refused.text
            assert [e["location"] for e in refused.json()["errors"]] == ["body.value_property"], refused.text
        for meter in (
            {"slug": "people", "event_type": "chat", "aggregation": "UNIQUE_COUNT", "value_property": "$.data.email"},
            {"slug": "tokens", "event_type": "chat", "aggregation": "SUM", "value_property": "$.data.tokens"},
        ):
            assert (await omni.client.post("/v1/meters", json=meter, headers=admin)).status_code == 201
        await omni.settle()
        widened = {"personal": ["$.data.email", "$.data.profile", "$.data.tokens"]}
        refused = await omni.client.put("/v1/data-classes/chat", json=widened, headers=admin)
        assert refused.status_code == 422 and "'tokens'" in refused.json()["errors"][0]["reason"], refused.text
        got = await omni.client.get("/v1/data-classes/chat", headers=admin)
        assert got.json()["version"] == 1, got.text  # unchanged
        other = await omni.client.put("/v1/data-classes/chat", json={"personal": ["$.data.email"]}, headers=admin)
        assert other.status_code == 200, other.text


async def test_a_tenants_exports_run_one_at_a_time(omni: Omni, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reads its tenant's whole usage partition: a walkthrough's 77 at once kept the API busy
    for a minute, every tenant's requests slower. A's exports queue behind its first (held here
    until every request was taken) while B's runs beside it; each still completes."""
    from omni.gdpr_jobs import GdprJobs

    real = GdprJobs._export_now
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    all_taken = asyncio.Event()
    beside: list[dict[str, int]] = []  # who ran, as each export started

    async def counted(self: GdprJobs, gdpr_request: Any) -> int:
        tenant = gdpr_request.tenant_id
        running[tenant] = running.get(tenant, 0) + 1
        most[tenant] = max(most.get(tenant, 0), running[tenant])
        beside.append(dict(running))
        try:
            await asyncio.wait_for(all_taken.wait(), 20)
            return await real(self, gdpr_request)
        finally:
            running[tenant] -= 1

    monkeypatch.setattr(GdprJobs, "_export_now", counted)
    a_id, a_key = await omni.tenant("a")
    b_id, b_key = await omni.tenant("b")
    sent = []
    try:
        for key, subject in ((a_key, "p-1"), (a_key, "p-2"), (a_key, "p-3"), (b_key, "p-1")):
            response = await omni.client.post(
                "/v1/gdpr/requests", json={"subject": subject, "kind": "access"}, headers=omni.auth(key)
            )
            assert response.status_code == 202, response.text
            sent.append((key, response.json()["id"]))
        async with asyncio.timeout(20):
            while running.get(b_id, 0) < 1:  # B's export started while A's first is held
                await asyncio.sleep(0.01)
        assert running == {a_id: 1, b_id: 1}
    finally:
        all_taken.set()
    for key, request_id in sent:
        assert (await finished(omni, key, request_id))["status"] == "completed"
    assert most == {a_id: 1, b_id: 1} and len(beside) == 4


async def test_an_erasure_waits_for_the_exports_of_its_tenant_before_it(omni: Omni, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export waiting its turn (the tenant's exports run one at a time) found its person's key
    erased meanwhile and kept its document unsealed. An erasure now takes the same turn: it starts
    once the exports queued before it have ended."""
    from omni.gdpr_jobs import GdprJobs

    real_export, real_erase = GdprJobs._export_now, GdprJobs._erase
    release = asyncio.Event()
    order: list[str] = []

    async def held_export(self: GdprJobs, gdpr_request: Any) -> int:
        order.append("export started")
        await asyncio.wait_for(release.wait(), 20)
        try:
            return await real_export(self, gdpr_request)
        finally:
            order.append("export ended")

    async def erase(self: GdprJobs, ctx: Any, gdpr_request: Any, resumed: bool) -> None:
        order.append("erasure started")
        await real_erase(self, ctx, gdpr_request, resumed)

    monkeypatch.setattr(GdprJobs, "_export_now", held_export)
    monkeypatch.setattr(GdprJobs, "_erase", erase)
    _, key = await omni.tenant("a")
    sent = []
    try:
        for kind in ("access", "erasure"):
            response = await omni.client.post("/v1/gdpr/requests", json={"subject": "p-1", "kind": kind}, headers=omni.auth(key))
            assert response.status_code == 202, response.text
            sent.append(response.json()["id"])
        async with asyncio.timeout(20):
            while not order:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # time enough for the erasure to start, were it not waiting
        assert order == ["export started"]
    finally:
        release.set()
    for request_id in sent:
        assert (await finished(omni, key, request_id))["status"] == "completed"
    assert order == ["export started", "export ended", "erasure started"]
