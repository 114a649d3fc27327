"""What one owner may hold in the control plane, in both modes: a tenant's (or the platform's) SLOs,
each folded from the whole shared log when defined or revised, how often one SLO is revised, and a
tenant's active API keys (whose list, revoked ones included, is paged). Each refusal is a problem
with a stable type, and an audited command."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN, Omni, embedded_settings, kafka_settings, served, services_or_skip
from tests.e2e.test_bad_input import assert_problem

SLOS, REVISIONS, KEYS = 3, 2, 3
LIMITS = {"max_slos_per_tenant": SLOS, "slo_revisions_per_hour": REVISIONS, "max_keys_per_tenant": KEYS}
SLO = {"event_type": "inference", "sli": "availability", "status_property": "$.data.status", "objective": 99, "window": "7d"}


@pytest.fixture(params=["embedded", "kafka"])
async def limited(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Omni]:
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "data", **LIMITS)
    else:
        services_or_skip()
        settings = kafka_settings(uuid.uuid4().hex[:12], **LIMITS)
    async with served(settings) as running:
        yield running


async def put_slo(omni: Omni, key: str, name: str, body: dict[str, Any] = SLO) -> httpx.Response:
    return await omni.client.put(f"/v1/slos/{name}", json=body, headers=omni.auth(key))


async def refusals(omni: Omni, key: str) -> list[tuple[str, str, str]]:
    await omni.settle()
    response = await omni.client.get("/v1/audit", params={"outcome": "rejected"}, headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return [(e["action"], e["resource"], e["reason"]) for e in response.json()["data"]]


async def test_an_owner_defines_at_most_its_limit_of_slos_and_still_revises_them(limited: Omni) -> None:
    omni = limited
    _, key = await omni.tenant("a")
    _, other = await omni.tenant("b")
    for i in range(SLOS):
        assert (await put_slo(omni, key, f"slo-{i}")).status_code == 201
    refused = assert_problem(await put_slo(omni, key, "one-more"), 409)
    assert refused["type"] == "https://omni.dev/problems/slo-limit-reached"
    assert refused["limit"] == SLOS and f"OMNI_MAX_SLOS_PER_TENANT = {SLOS}" in refused["detail"]
    # At the limit, an SLO it has is revised, or put unchanged, as before.
    revised = await put_slo(omni, key, "slo-0", {**SLO, "objective": 99.5})
    assert (revised.status_code, revised.json()["version"]) == (200, 2)
    assert (await put_slo(omni, key, "slo-1")).status_code == 200
    # Another tenant and the platform count their own.
    assert (await put_slo(omni, other, "one-more")).status_code == 201
    for i in range(SLOS):
        assert (await put_slo(omni, ADMIN, f"platform-{i}")).status_code == 201
    assert assert_problem(await put_slo(omni, ADMIN, "one-more"), 409)["type"].endswith("/slo-limit-reached")
    await omni.settle()
    listed = (await omni.client.get("/v1/slos", headers=omni.auth(key))).json()["data"]
    assert [s["name"] for s in listed] == ["slo-0", "slo-1", "slo-2"]
    assert (await omni.client.get("/v1/slos/one-more", headers=omni.auth(key))).status_code == 404
    assert [(action, resource) for action, resource, _ in await refusals(omni, key)] == [("slo.put", "slos/one-more")]
    assert [(action, resource) for action, resource, _ in await refusals(omni, ADMIN)] == [("slo.put", "slos/one-more")]


async def test_new_slos_stored_at_once_never_pass_the_limit(limited: Omni) -> None:
    omni = limited
    _, key = await omni.tenant("a")
    assert (await put_slo(omni, key, "first")).status_code == 201
    answers = await asyncio.gather(*(put_slo(omni, key, f"racer-{i}") for i in range(4)))
    assert sorted(a.status_code for a in answers) == [201, 201, 409, 409], [a.text for a in answers]
    await omni.settle()
    assert len((await omni.client.get("/v1/slos", headers=omni.auth(key))).json()["data"]) == SLOS


async def test_one_slo_is_revised_at_most_so_often_in_an_hour(limited: Omni) -> None:
    omni = limited
    _, key = await omni.tenant("a")
    assert (await put_slo(omni, key, "tuned")).status_code == 201
    for objective in (99.1, 99.2):
        assert (await put_slo(omni, key, "tuned", {**SLO, "objective": objective})).status_code == 200
    refused = await put_slo(omni, key, "tuned", {**SLO, "objective": 99.3})
    body = assert_problem(refused, 429)
    assert body["type"] == "https://omni.dev/problems/slo-revised-too-often"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert f"OMNI_SLO_REVISIONS_PER_HOUR = {REVISIONS}" in body["detail"]
    # The version stands; putting it unchanged is no revision; another SLO is revised as before.
    unchanged = await put_slo(omni, key, "tuned", {**SLO, "objective": 99.2})
    assert (unchanged.status_code, unchanged.json()["version"]) == (200, 3)
    assert (await put_slo(omni, key, "other")).status_code == 201
    assert (await put_slo(omni, key, "other", {**SLO, "objective": 98})).status_code == 200
    assert [(action, resource) for action, resource, _ in await refusals(omni, key)] == [("slo.put", "slos/tuned")]


async def issue(omni: Omni, key: str, tenant_id: str) -> httpx.Response:
    return await omni.client.post(f"/v1/tenants/{tenant_id}/keys", json={"label": "more"}, headers=omni.auth(key))


async def keys_page(omni: Omni, key: str, tenant_id: str, **params: Any) -> httpx.Response:
    return await omni.client.get(f"/v1/tenants/{tenant_id}/keys", params=params, headers=omni.auth(key))


async def test_a_tenant_holds_at_most_its_limit_of_active_keys(limited: Omni) -> None:
    omni = limited
    tenant_id, key = await omni.tenant("a")
    other_id, other = await omni.tenant("b")
    issued = [(await issue(omni, key, tenant_id)).json()["key_id"] for _ in range(KEYS - 1)]  # and its first key
    for caller in (key, ADMIN):
        refused = assert_problem(await issue(omni, caller, tenant_id), 409)
        assert refused["type"] == "https://omni.dev/problems/key-limit-reached"
        assert refused["limit"] == KEYS and f"OMNI_MAX_KEYS_PER_TENANT = {KEYS}" in refused["detail"]
    assert (await issue(omni, other, other_id)).status_code == 201  # another tenant counts its own
    # A revoked key counts no more; revoking it again frees nothing more.
    for _ in range(2):
        assert (await omni.client.delete(f"/v1/keys/{issued[0]}", headers=omni.auth(key))).status_code == 204
    assert (await issue(omni, key, tenant_id)).status_code == 201
    assert (await issue(omni, key, tenant_id)).status_code == 409
    await omni.settle()
    listed = (await keys_page(omni, key, tenant_id)).json()
    assert (len(listed["data"]), listed["next_after"]) == (KEYS + 1, None)
    assert [k["key_id"] for k in listed["data"] if k["revoked_at"]] == [issued[0]]
    refused_here = ("api_key.issue", f"tenants/{tenant_id}/keys")
    assert [(action, where) for action, where, _ in await refusals(omni, key)] == [refused_here] * 2
    assert [(action, where) for action, where, _ in await refusals(omni, ADMIN)] == [refused_here]


async def test_keys_issued_at_once_never_pass_the_limit(limited: Omni) -> None:
    omni = limited
    tenant_id, key = await omni.tenant("a")
    answers = await asyncio.gather(*(issue(omni, key, tenant_id) for _ in range(4)))
    assert sorted(a.status_code for a in answers) == [201, 201, 409, 409], [a.text for a in answers]
    await omni.settle()
    listed = (await keys_page(omni, key, tenant_id)).json()["data"]
    assert len([k for k in listed if k["revoked_at"] is None]) == KEYS


async def test_the_key_list_is_paged_in_the_order_keys_were_issued(limited: Omni) -> None:
    omni = limited
    tenant_id, key = await omni.tenant("a")
    other_id, other = await omni.tenant("b")
    for _ in range(4):  # revoked keys stay listed: the list outgrows the limit on active ones
        issued = (await issue(omni, key, tenant_id)).json()["key_id"]
        assert (await omni.client.delete(f"/v1/keys/{issued}", headers=omni.auth(key))).status_code == 204
    await omni.settle()
    whole = (await keys_page(omni, key, tenant_id)).json()
    assert (len(whole["data"]), whole["next_after"]) == (5, None)
    pages, after = [], None
    while True:
        page = (await keys_page(omni, key, tenant_id, limit=2, **({"after": after} if after else {}))).json()
        pages.append([k["key_id"] for k in page["data"]])
        after = page["next_after"]
        if after is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [k for p in pages for k in p] == [k["key_id"] for k in whole["data"]]
    # the last two: instants before year 1 and after year 9999 in UTC (were 500s)
    overflowing = ("0001-01-01T00:00:00+01:00~0123456789abcdef", "9999-12-31T23:59:59-01:00~0123456789abcdef")
    for bad in ("nonsense", "2026-01-01T00:00:00Z~", "2026-01-01T00:00:00~abc", "yesterday~abc", *overflowing):
        body = assert_problem(await keys_page(omni, key, tenant_id, after=bad), 422)
        assert body["type"].endswith("/invalid-cursor")
    assert assert_problem(await keys_page(omni, key, tenant_id, limit=0), 422)
    assert (await keys_page(omni, other, tenant_id)).status_code == 404
    assert [k["key_id"] for k in (await keys_page(omni, ADMIN, other_id)).json()["data"]] != []


async def delete_slo(omni: Omni, key: str, name: str) -> int:
    response = await omni.client.delete(f"/v1/slos/{name}", headers=omni.auth(key))
    await omni.settle()
    return response.status_code


async def test_a_deleted_slo_keeps_its_place_for_an_hour_but_its_own_name_comes_back_at_once(limited: Omni) -> None:
    """Deleting and defining under new names in a loop would fold the whole log again without bound:
    a deleted SLO keeps its place in the count for an hour (tests/unit/test_control_plane.py holds the
    hour). Its own name put again takes its place back at once, as its next version: a revision, so
    its revisions in the hour are counted with it."""
    omni = limited
    _, key = await omni.tenant("a")
    for i in range(SLOS):
        assert (await put_slo(omni, key, f"slo-{i}")).status_code == 201
    assert await delete_slo(omni, key, "slo-1") == 204
    refused = assert_problem(await put_slo(omni, key, "another"), 409)
    assert refused["type"].endswith("/slo-limit-reached") and "1 of them deleted within the hour" in refused["detail"]
    again = await put_slo(omni, key, "slo-1")
    assert (again.status_code, again.json()["version"]) == (201, 2)
    # slo-1 has one revision this hour (its redefinition); REVISIONS is 2: one more, then 429.
    assert (await put_slo(omni, key, "slo-1", {**SLO, "objective": 98})).status_code == 200
    assert await delete_slo(omni, key, "slo-1") == 204
    assert assert_problem(await put_slo(omni, key, "slo-1"), 429)["type"].endswith("/slo-revised-too-often")
    listed = (await omni.client.get("/v1/slos", headers=omni.auth(key))).json()["data"]
    assert [s["name"] for s in listed] == ["slo-0", "slo-2"]
