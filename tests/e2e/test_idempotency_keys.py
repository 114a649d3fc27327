"""POST requests sent again with their `Idempotency-Key` (as Stripe's API takes it), in both modes:
a client whose connection dropped before the answer came sends its POST again, and before this it
created a second tenant, a second key, a second webhook endpoint. Now the retry gets the first
answer, byte for byte (the secret shown once included), and nothing is done twice."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_bad_input import assert_problem
from tests.e2e.test_meter_watch import MODES, live, settings_for


def keyed(omni: Omni, token: str, key: str) -> dict[str, str]:
    return {**omni.auth(token), "Idempotency-Key": key}


async def tenants(omni: Omni) -> list[dict[str, Any]]:
    await omni.settle()
    response = await omni.client.get("/v1/tenants", params={"limit": 100}, headers=omni.auth(ADMIN))
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


async def test_a_post_sent_again_with_its_key_gets_the_first_answer_and_does_nothing_twice(omni: Omni) -> None:
    body = {"name": "acme", "plan": "pro"}
    first = await omni.client.post("/v1/tenants", json=body, headers=keyed(omni, ADMIN, "create-acme-1"))
    again = await omni.client.post("/v1/tenants", json=body, headers=keyed(omni, ADMIN, "create-acme-1"))
    assert first.status_code == 201, first.text
    assert again.status_code == 201 and again.content == first.content  # the same tenant, the same key shown once
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["cache-control"] == "no-store"  # a secret: never cached, given again or not
    assert [t["name"] for t in await tenants(omni)] == ["acme"]
    # The key given again works: it is the tenant's one key.
    tenant_key = first.json()["api_key"]
    assert (await omni.client.get(f"/v1/tenants/{first.json()['id']}", headers=omni.auth(tenant_key))).status_code == 200

    # Without a key, or with another, a POST is a new request.
    other = await omni.client.post("/v1/tenants", json=body, headers=keyed(omni, ADMIN, "create-acme-2"))
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert len(await tenants(omni)) == 2


async def test_a_key_names_one_request(omni: Omni) -> None:
    first = await omni.client.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=keyed(omni, ADMIN, "k"))
    assert first.status_code == 201, first.text
    for path, body in [
        ("/v1/tenants", {"name": "other", "plan": "pro"}),
        ("/v1/meters", {"slug": "x", "event_type": "x", "aggregation": "COUNT"}),
    ]:
        refused = await omni.client.post(path, json=body, headers=keyed(omni, ADMIN, "k"))
        problem = assert_problem(refused, 422)
        assert problem["type"].endswith("/idempotency-key-reused")
        assert problem["errors"][0]["location"] == "header.Idempotency-Key"
    assert [t["name"] for t in await tenants(omni)] == ["acme"]


async def test_keys_are_each_callers_own(omni: Omni) -> None:
    tenant_id, key = await omni.tenant("acme")
    _, other_key = await omni.tenant("globex")
    body = {"label": "ci"}
    mine = await omni.client.post(f"/v1/tenants/{tenant_id}/keys", json=body, headers=keyed(omni, key, "issue-ci"))
    assert mine.status_code == 201, mine.text
    # Another caller's same key is another request: it never sees this answer (here: not its tenant).
    theirs = await omni.client.post(f"/v1/tenants/{tenant_id}/keys", json=body, headers=keyed(omni, other_key, "issue-ci"))
    assert theirs.status_code == 404 and "idempotent-replayed" not in theirs.headers
    admins = await omni.client.post(f"/v1/tenants/{tenant_id}/keys", json=body, headers=keyed(omni, ADMIN, "issue-ci"))
    assert admins.status_code == 201 and admins.json()["key_id"] != mine.json()["key_id"]


async def test_a_request_that_failed_keeps_nothing_and_its_retry_runs(omni: Omni) -> None:
    bad = await omni.client.post("/v1/tenants", json={"name": "", "plan": "pro"}, headers=keyed(omni, ADMIN, "retry-me"))
    assert_problem(bad, 422)
    again = await omni.client.post("/v1/tenants", json={"name": "", "plan": "pro"}, headers=keyed(omni, ADMIN, "retry-me"))
    assert_problem(again, 422)
    assert "idempotent-replayed" not in again.headers  # run again, not given again
    fixed = await omni.client.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=keyed(omni, ADMIN, "retry-me"))
    assert fixed.status_code == 201, fixed.text


async def test_requests_racing_with_one_key_do_it_once(omni: Omni) -> None:
    body = {"name": "acme", "plan": "pro"}
    answers = await asyncio.gather(
        *(omni.client.post("/v1/tenants", json=body, headers=keyed(omni, ADMIN, "raced")) for _ in range(8))
    )
    assert {a.status_code for a in answers} <= {201, 409}, [a.text for a in answers]
    created = [a for a in answers if a.status_code == 201]
    assert len({a.content for a in created}) == 1  # one tenant, told to each that got it
    for busy in (a for a in answers if a.status_code == 409):
        assert busy.json()["type"].endswith("/idempotency-key-in-progress") and busy.headers["retry-after"] == "1"
    assert len(await tenants(omni)) == 1


async def test_a_malformed_key_is_refused_and_nothing_done(omni: Omni) -> None:
    for key in ["", "has space", "x" * 256, "é".encode()]:
        answer = await omni.client.post(
            "/v1/tenants", json={"name": "acme", "plan": "pro"}, headers={**omni.auth(ADMIN), "Idempotency-Key": key}
        )
        problem = assert_problem(answer, 422)
        assert problem["type"].endswith("/invalid-idempotency-key"), key
    assert await tenants(omni) == []


async def test_the_kept_answer_is_sealed(omni: Omni) -> None:
    first = await omni.client.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=keyed(omni, ADMIN, "sealed"))
    secret = first.json()["api_key"]
    with omni.platform.personal.keys_db.transaction() as tx:
        rows = tx.execute("SELECT scope, idem_key, fingerprint, state, sealed FROM idempotency_keys")
    assert len(rows) == 1 and rows[0][3] == "done"
    assert all(secret not in str(value) for value in rows[0])  # the key shown once is not kept in clear


async def test_routes_with_keys_of_their_own_ignore_the_header(omni: Omni) -> None:
    from tests.conftest import cloud_event

    _, key = await omni.tenant("acme")
    events = [cloud_event("e1")]
    for _ in range(2):
        response = await omni.client.post(
            "/v1/events",
            json=events,
            headers={**keyed(omni, key, "batch-1"), "Content-Type": "application/cloudevents-batch+json"},
        )
        assert response.status_code == 202 and "idempotent-replayed" not in response.headers
    with omni.platform.personal.keys_db.transaction() as tx:
        assert tx.execute("SELECT count(*) FROM idempotency_keys")[0][0] == 0


def test_sqlite_has_what_the_claim_needs() -> None:
    assert sqlite3.sqlite_version_info >= (3, 35)  # ON CONFLICT ... DO UPDATE ... WHERE, and RETURNING


@MODES
async def test_a_retry_sent_the_moment_the_answer_came_gets_it_again(mode: str, tmp_path: Path) -> None:
    """Over a real socket, where the client has the answer as soon as its last byte is sent. The
    answer was kept only after it was sent: a retry sent at once found its key still pending, and
    was told 409 rather than given the answer it had just missed (a walkthrough: 33 of 200)."""
    async with live(settings_for(mode, tmp_path)) as running, httpx.AsyncClient(base_url=running.url, timeout=30) as client:
        for n in range(40):
            body = {"slug": f"m{n}", "event_type": "x", "aggregation": "COUNT"}
            headers = {"Authorization": f"Bearer {ADMIN}", "Idempotency-Key": f"meter-{n}"}
            first = await client.post("/v1/meters", json=body, headers=headers)
            again = await client.post("/v1/meters", json=body, headers=headers)
            assert first.status_code == 201, first.text
            assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true", (n, again.text)


async def test_a_key_sent_twice_in_one_request_is_refused(omni: Omni) -> None:
    headers = [("Authorization", f"Bearer {ADMIN}"), ("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")]
    answer = await omni.client.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=headers)
    assert assert_problem(answer, 422)["type"].endswith("/invalid-idempotency-key")
    assert await tenants(omni) == []
