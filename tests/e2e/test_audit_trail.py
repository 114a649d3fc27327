"""The audit trail over the API, in both modes: each tenant's chain (and `_platform`'s) listed with
filters and pages, exported as JSON Lines that `omni audit verify` accepts untouched and refuses,
naming the line, once edited; tenants see only their own chain; and a rebuild of the chains from
the audit topic gives the same entries, hashes and signed checkpoints."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from omni.cli import app as cli
from tests.e2e.conftest import ADMIN, Omni, embedded_settings, kafka_settings, served, services_or_skip

EVERY = 2  # a periodic checkpoint every two entries of a chain


@pytest.fixture(params=["embedded", "kafka"])
async def omni(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Omni]:
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "data", audit_checkpoint_every=EVERY)
    else:
        services_or_skip()
        settings = kafka_settings(uuid.uuid4().hex[:12], audit_checkpoint_every=EVERY)
    async with served(settings) as running:
        yield running


async def some_commands(omni: Omni) -> tuple[str, str, str]:
    """Tenant A: created, a second key, a refused revocation, a revocation; the admin defines a meter."""
    a_id, a_key = await omni.tenant("a")
    issued = await omni.client.post(f"/v1/tenants/{a_id}/keys", json={"label": "ci"}, headers=omni.auth(a_key))
    assert issued.status_code == 201, issued.text
    refused = await omni.client.delete("/v1/keys/nope", headers={**omni.auth(a_key), "User-Agent": "auditor/1"})
    assert refused.status_code == 404
    revoked = await omni.client.delete(f"/v1/keys/{issued.json()['key_id']}", headers=omni.auth(a_key))
    assert revoked.status_code == 204
    await omni.meter(slug="calls", event_type="call", aggregation="COUNT")
    b_id, _ = await omni.tenant("b")
    await omni.settle()
    return a_id, a_key, b_id


async def listed(omni: Omni, key: str, **params: Any) -> dict[str, Any]:
    response = await omni.client.get("/v1/audit", params=params, headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def exported(omni: Omni, key: str, **params: Any) -> bytes:
    response = await omni.client.get("/v1/audit/export", params=params, headers=omni.auth(key))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonl")
    return response.content


def proven(tmp_path: Path, proof: bytes, pem: str) -> tuple[int, str]:
    """`omni audit verify-proof PROOF --public-key PEM_FILE`: its exit code and what it said."""
    (tmp_path / "proof.json").write_bytes(proof)
    (tmp_path / "audit.pem").write_text(pem)
    result = CliRunner().invoke(
        cli, ["audit", "verify-proof", str(tmp_path / "proof.json"), "--public-key", str(tmp_path / "audit.pem")]
    )
    return result.exit_code, result.output


def grown(tmp_path: Path, kept: bytes, proof: bytes, pem: str) -> tuple[int, str]:
    """`omni audit verify-consistency PROOF --kept CHECKPOINT --public-key PEM_FILE`."""
    (tmp_path / "kept.json").write_bytes(kept)
    (tmp_path / "consistency.json").write_bytes(proof)
    (tmp_path / "audit.pem").write_text(pem)
    result = CliRunner().invoke(
        cli,
        ["audit", "verify-consistency", str(tmp_path / "consistency.json"), "--kept", str(tmp_path / "kept.json"),
         "--public-key", str(tmp_path / "audit.pem")],
    )  # fmt: skip
    return result.exit_code, result.output


def verified(tmp_path: Path, export: bytes, pem: str) -> tuple[int, str]:
    """`omni audit verify EXPORT --public-key PEM_FILE`: its exit code and what it said."""
    (tmp_path / "export.jsonl").write_bytes(export)
    (tmp_path / "audit.pem").write_text(pem)
    result = CliRunner().invoke(
        cli, ["audit", "verify", str(tmp_path / "export.jsonl"), "--public-key", str(tmp_path / "audit.pem")]
    )
    return result.exit_code, result.output


async def test_each_tenant_has_a_chain_listed_filtered_and_paged(omni: Omni) -> None:
    a_id, a_key, b_id = await some_commands(omni)
    chain = (await listed(omni, a_key))["data"]
    assert [(e["seq"], e["action"], e["outcome"]) for e in chain] == [
        (1, "tenant.create", "accepted"),
        (2, "api_key.issue", "accepted"),
        (3, "api_key.revoke", "rejected"),
        (4, "api_key.revoke", "accepted"),
    ]
    assert {e["chain"] for e in chain} == {a_id}
    assert [e["prev"] for e in chain[1:]] == [e["hash"] for e in chain[:-1]]
    assert chain[2]["opened_actor"]["user_agent"] == "auditor/1"  # sealed in the entry, opened for its tenant
    # The admin's command on the tenant (its creation) is the operator's: sealed for the tenant, opened
    # for the admin alone.
    assert chain[0]["actor"]["key_id"] == "admin" and chain[0]["opened_actor"] == {"ip": None, "user_agent": None}
    as_admin = (await listed(omni, ADMIN, tenant=a_id))["data"]
    assert as_admin[0]["opened_actor"]["ip"] is not None and as_admin[2]["opened_actor"] == chain[2]["opened_actor"]
    assert [e["hash"] for e in as_admin] == [e["hash"] for e in chain], "the same entries, as hashed"
    backwards = await omni.client.get(
        "/v1/audit", params={"from": "2026-12-07T10:00:00Z", "to": "2026-12-07T09:00:00Z"}, headers=omni.auth(a_key)
    )
    assert backwards.status_code == 422 and backwards.json()["errors"][0]["location"] == "query.to", backwards.text
    assert chain[2]["actor"]["user_agent"]["ps"].startswith("ps2_") and "auditor/1" not in str(chain[2]["actor"])
    # Filters and pages.
    assert [e["seq"] for e in (await listed(omni, a_key, outcome="rejected"))["data"]] == [3]
    assert [e["seq"] for e in (await listed(omni, a_key, action="api_key.revoke"))["data"]] == [3, 4]
    assert [e["seq"] for e in (await listed(omni, a_key, actor="admin"))["data"]] == [1]
    first = await listed(omni, a_key, limit=3)
    assert [e["seq"] for e in first["data"]] == [1, 2, 3] and first["next_after"] == 3
    rest = await listed(omni, a_key, limit=3, after=3)
    assert [e["seq"] for e in rest["data"]] == [4] and rest["next_after"] is None
    start, end = chain[1]["time"], chain[3]["time"]
    assert [e["seq"] for e in (await listed(omni, a_key, **{"from": start, "to": end}))["data"]] == [2, 3]
    # The admin: the platform's own chain by default, a tenant's by `?tenant=`.
    platform = (await listed(omni, ADMIN))["data"]
    assert [(e["chain"], e["action"]) for e in platform] == [("_platform", "meter.define")]

    def unopened(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "opened_actor"} for e in entries]

    assert unopened((await listed(omni, ADMIN, tenant=a_id))["data"]) == unopened(chain)
    assert [e["action"] for e in (await listed(omni, ADMIN, tenant=b_id))["data"]] == ["tenant.create"]
    # Another tenant's chain, or the platform's, is not found for a tenant; an unknown tenant neither.
    for path in ("/v1/audit", "/v1/audit/export"):
        for key, tenant in ((a_key, b_id), (a_key, "_platform"), (ADMIN, str(uuid.uuid4())), (ADMIN, "nope")):
            response = await omni.client.get(path, params={"tenant": tenant}, headers=omni.auth(key))
            assert response.status_code == 404, (path, tenant, response.text)
            assert response.headers["content-type"] == "application/problem+json"
    bad = await omni.client.get("/v1/audit", params={"from": "2026-11-02T00:00:00"}, headers=omni.auth(a_key))
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"  # no offset


async def test_an_export_verifies_untouched_and_names_the_line_once_edited(omni: Omni, tmp_path: Path) -> None:
    a_id, a_key, _ = await some_commands(omni)
    pem = (await omni.client.get("/v1/audit/public-key", headers=omni.auth(a_key))).text
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    export = await exported(omni, a_key)
    lines = export.splitlines()
    kinds = [(item["kind"], item.get("seq", item.get("length"))) for item in map(orjson.loads, lines)]
    assert kinds == [
        ("entry", 1),
        ("entry", 2),
        ("checkpoint", 2),
        ("entry", 3),
        ("entry", 4),
        ("checkpoint", 4),
        ("checkpoint", 4),
    ]
    assert orjson.loads(lines[-1])["final"] is True
    code, said = verified(tmp_path, export, pem)
    assert code == 0, said
    assert f"chain {a_id}, 4 entries" in said
    # An edited outcome (the refusal made to look accepted) is named by its line, 4.
    tampered = export.replace(b'"outcome":"rejected"', b'"outcome":"accepted"')
    assert tampered != export
    code, said = verified(tmp_path, tampered, pem)
    assert code == 1 and ":4:" in said, said
    # The tail cut off: the export no longer ends with its final checkpoint (line 7 is missing).
    code, said = verified(tmp_path, b"\n".join(lines[:-1]) + b"\n", pem)
    assert code == 1 and ":7:" in said and "truncated" in said, said
    # The platform's chain and another tenant's verify too (the admin exports them).
    for params in ({}, {"tenant": a_id}):
        code, said = verified(tmp_path, await exported(omni, ADMIN, **params), pem)
        assert code == 0, (params, said)


async def test_a_rebuild_from_the_audit_topic_gives_the_same_chains(omni: Omni, tmp_path: Path) -> None:
    a_id, a_key, _ = await some_commands(omni)
    before = {chain: await exported(omni, ADMIN, tenant=chain) for chain in ("_platform", a_id)}
    with omni.platform.db.transaction() as tx:
        for table in ("audit_entries", "audit_heads", "audit_checkpoints", "audit_trees"):
            tx.execute(f"DELETE FROM {table}")
        tx.execute("DELETE FROM checkpoints WHERE consumer='audit'")
    assert (await listed(omni, a_key))["data"] == []
    await omni.settle()
    pem = (await omni.client.get("/v1/audit/public-key", headers=omni.auth(ADMIN))).text
    for chain, export in before.items():
        again = await exported(omni, ADMIN, tenant=chain)
        # Everything but the final checkpoint, signed at each export's own time, is byte-identical.
        assert again.splitlines()[:-1] == export.splitlines()[:-1], chain
        assert verified(tmp_path, again, pem)[0] == 0


async def test_one_entry_is_proven_in_a_signed_tree_head_without_the_others(omni: Omni, tmp_path: Path) -> None:
    a_id, a_key, b_id = await some_commands(omni)
    pem = (await omni.client.get("/v1/audit/public-key", headers=omni.auth(a_key))).text
    # As hashed: without what the list adds beside each entry (its actor opened).
    chain = [{k: v for k, v in e.items() if k != "opened_actor"} for e in (await listed(omni, a_key))["data"]]

    async def proof(key: str, **params: Any) -> Any:
        return await omni.client.get("/v1/audit/proof", params=params, headers=omni.auth(key))

    for seq in (1, 3, 4):  # in a tree signed now, of all 4 entries
        response = await proof(a_key, seq=seq)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["entry"] == chain[seq - 1] and body["tree_size"] == 4 and body["checkpoint"]["final"] is True
        assert len(body["audit_path"]) == 2  # log2(4) hashes, no other entry
        code, said = proven(tmp_path, response.content, pem)
        assert code == 0 and f"entry {seq} of chain {a_id}" in said, said
    # In the periodic checkpoint of the first 2 entries, as stored (and as the export holds it).
    periodic = (await proof(a_key, seq=2, length=2)).json()
    export_checkpoint = orjson.loads((await exported(omni, a_key)).splitlines()[2])
    assert periodic["checkpoint"] == export_checkpoint and periodic["tree_size"] == 2
    assert proven(tmp_path, orjson.dumps(periodic), pem)[0] == 0
    # An edited entry, a path leading elsewhere, or another chain's checkpoint: not proven, and why.
    edited = {**periodic, "entry": {**periodic["entry"], "outcome": "rejected"}}
    moved = {**periodic, "audit_path": [chain[3]["hash"]]}
    other = (await proof(ADMIN, tenant=b_id, seq=1)).json()
    swapped = {**periodic, "checkpoint": other["checkpoint"]}
    for tampered, why in ((edited, "a field was edited"), (moved, "does not lead"), (swapped, "different chains")):
        code, said = proven(tmp_path, orjson.dumps(tampered), pem)
        assert code == 1 and why in said, said
    # Not found: past the chain's end, a checkpoint that does not cover the entry, another tenant's chain.
    for key, params in ((a_key, {"seq": 5}), (a_key, {"seq": 3, "length": 2}), (a_key, {"seq": 1, "tenant": b_id})):
        response = await proof(key, **params)
        assert response.status_code == 404, (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    # A chain linked before its tree was kept gets it from its entries: checkpoints and proofs still hold.
    with omni.platform.db.transaction() as tx:
        tx.execute("DELETE FROM audit_trees")
    issued = await omni.client.post(f"/v1/tenants/{a_id}/keys", json={"label": "later"}, headers=omni.auth(a_key))
    assert issued.status_code == 201
    await omni.settle()
    assert verified(tmp_path, await exported(omni, a_key), pem)[0] == 0
    assert proven(tmp_path, (await proof(a_key, seq=5)).content, pem)[0] == 0


async def test_a_kept_checkpoint_is_proven_a_prefix_of_the_chain_as_it_grew(omni: Omni, tmp_path: Path) -> None:
    a_id, a_key, b_id = await some_commands(omni)
    pem = (await omni.client.get("/v1/audit/public-key", headers=omni.auth(a_key))).text
    kept = (await exported(omni, a_key)).splitlines()[-1]  # an auditor keeps the export's final checkpoint (4 entries)
    for label in ("one", "two"):
        issued = await omni.client.post(f"/v1/tenants/{a_id}/keys", json={"label": label}, headers=omni.auth(a_key))
        assert issued.status_code == 201
    await omni.settle()
    response = await omni.client.get("/v1/audit/consistency", params={"first": 4}, headers=omni.auth(a_key))
    assert response.status_code == 200, response.text
    assert response.json()["second"]["length"] == 6 and response.json()["first_length"] == 4
    code, said = grown(tmp_path, kept, response.content, pem)
    assert code == 0 and "from the 4 entries you kept to 6" in said, said
    # Against the periodic checkpoint of 6 entries too; a kept checkpoint of another length is refused.
    periodic = await omni.client.get("/v1/audit/consistency", params={"first": 4, "second": 6}, headers=omni.auth(a_key))
    assert grown(tmp_path, kept, periodic.content, pem)[0] == 0
    from_two = await omni.client.get("/v1/audit/consistency", params={"first": 2}, headers=omni.auth(a_key))
    code, said = grown(tmp_path, kept, from_two.content, pem)
    assert code == 1 and "starts from 2" in said, said
    # A rewritten history: the kept checkpoint's tree is no prefix of the chain now.
    with omni.platform.db.transaction() as tx:
        tx.execute("DELETE FROM audit_trees")
        body = tx.execute("SELECT body FROM audit_entries WHERE chain=? AND seq=2", (a_id,))[0][0]
        forged = orjson.loads(body) | {"hash": "ab" * 32}
        tx.execute("UPDATE audit_entries SET body=? WHERE chain=? AND seq=2", (orjson.dumps(forged).decode(), a_id))
    rewritten = await omni.client.get("/v1/audit/consistency", params={"first": 4}, headers=omni.auth(a_key))
    code, said = grown(tmp_path, kept, rewritten.content, pem)
    assert code == 1 and "not a prefix" in said, said
    # Past the chain's end; no such periodic checkpoint; another tenant's chain.
    for params in ({"first": 7}, {"first": 2, "second": 3}, {"first": 1, "tenant": b_id}):
        missing = await omni.client.get("/v1/audit/consistency", params=params, headers=omni.auth(a_key))
        assert missing.status_code == 404, (params, missing.text)


async def test_refused_plan_and_quota_commands_are_audited(omni: Omni) -> None:
    """A tenant key's plan, quota and other admin commands (403), and the admin's invalid bodies
    (422) or paths naming nothing (404), each leave a rejected entry, as tenants, keys and meters do."""
    a_id, a_key = await omni.tenant("a")
    await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
    tenant_tries = [
        ("PUT", "/v1/plans/hack", {"entitlements": []}),
        ("PUT", f"/v1/tenants/{a_id}/plan", {"plan": "free"}),
        ("PUT", f"/v1/tenants/{a_id}/quotas/tokens", {"limit": 10**6, "period": "DAY"}),
        ("DELETE", f"/v1/tenants/{a_id}/quotas/tokens", None),
        ("PUT", "/v1/data-classes/inference", {"personal": ["$.data.email"]}),
        ("POST", "/v1/gdpr/breaches", {}),
        ("POST", "/v1/billing/periods/2026-01/close", None),
        ("POST", f"/v1/invoices/{uuid.uuid4()}/void", {"reason": "x"}),
        ("POST", "/v1/admin/replays", {}),
    ]
    for method, path, body in tenant_tries:
        response = await omni.client.request(method, path, json=body, headers=omni.auth(a_key))
        assert response.status_code == 403, (path, response.text)
    admin_tries = [
        ("PUT", f"/v1/tenants/{a_id}/quotas/tokens", {"limit": -1, "period": "DAY"}, 422),
        ("PUT", "/v1/plans/pro", {"entitlements": [{"meter": "tokens", "limit": 5, "period": "WEEK"}]}, 422),
        ("PUT", "/v1/tenants/not-a-tenant/plan", {"plan": "pro"}, 404),
    ]
    for method, path, body, status in admin_tries:
        response = await omni.client.request(method, path, json=body, headers=omni.auth(ADMIN))
        assert response.status_code == status, (path, response.text)
    await omni.settle()
    refused = (await listed(omni, a_key, outcome="rejected"))["data"]
    assert [(e["action"], e["resource"], e["reason"].split(" ")[0]) for e in refused] == [
        ("plan.put", "plans/hack", "403"),
        ("tenant.plan.assign", f"tenants/{a_id}/plan", "403"),
        ("quota.override.set", f"tenants/{a_id}/quotas/tokens", "403"),
        ("quota.override.remove", f"tenants/{a_id}/quotas/tokens", "403"),
        ("data_class.put", "data-classes/inference", "403"),
        ("gdpr.breach.record", "gdpr/breaches", "403"),
        ("billing.period.close", "billing/periods/2026-01", "403"),
        ("invoice.void", tenant_tries[-2][1].removeprefix("/v1/").removesuffix("/void"), "403"),
        ("replay.start", "replays", "403"),
    ]
    platform = (await listed(omni, ADMIN, outcome="rejected"))["data"]
    assert [(e["action"], e["resource"], e["reason"].split(" ")[0]) for e in platform] == [
        ("quota.override.set", f"tenants/{a_id}/quotas/tokens", "422"),
        ("plan.put", "plans/pro", "422"),  # the resource an accepted plan.put names (README, "Audit trail")
        ("tenant.plan.assign", "tenants/*/plan", "404"),  # no tenant id: not kept (commands.refusals)
    ]
    assert "body.limit" in platform[0]["reason"] and "body.entitlements.0.period" in platform[1]["reason"]


async def test_a_refused_command_whose_path_holds_a_nul_is_audited(omni: Omni) -> None:
    """`%00` in a path decodes to a NUL character, which no view can store: the refusal's entry
    names that segment `*` (no id has its shape), so it joins its chain rather than being
    dead-lettered by the fold."""
    a_id, a_key = await omni.tenant("a")
    tenant_tries = [("DELETE", "/v1/keys/%00", None, 404), ("POST", "/v1/tenants/%00/keys", {"label": "x"}, 404)]
    admin_tries = [
        ("PUT", "/v1/tenants/%00/plan", {"plan": "pro"}, 404),
        ("POST", "/v1/invoices/%00/void", {"reason": "x"}, 404),
        ("POST", "/v1/gdpr/breaches/a%00b/notified", None, 404),
    ]
    for key, tries in ((a_key, tenant_tries), (ADMIN, admin_tries)):
        for method, path, body, status in tries:
            response = await omni.client.request(method, path, json=body, headers=omni.auth(key))
            assert response.status_code == status, (path, response.text)
    await omni.settle()
    refused = [(e["action"], e["resource"]) for e in (await listed(omni, a_key, outcome="rejected"))["data"]]
    assert refused == [("api_key.revoke", "keys/*"), ("api_key.issue", "tenants/*/keys")]
    platform = (await listed(omni, ADMIN, outcome="rejected"))["data"]
    assert [(e["action"], e["resource"]) for e in platform] == [
        ("tenant.plan.assign", "tenants/*/plan"),
        ("invoice.void", "invoices/*"),
        ("gdpr.breach.notified", "gdpr/breaches/*"),
    ]
    assert all("\x00" not in e["resource"] + e["reason"] for e in platform), platform
    with omni.platform.db.transaction() as tx:
        assert tx.execute("SELECT count(*) FROM dead_letters")[0][0] == 0


async def test_a_refused_command_leaves_nothing_the_caller_sent_in_the_chain(omni: Omni) -> None:
    """A chain cannot be erased, so a refusal's entry keeps why in our words (status, title, kind,
    each error's place and code) and the path's ids where they have an id's shape: an e-mail address
    sent as a GDPR subject, a field's or a query parameter's name, a path segment or a meter's slug
    in a refused command reaches no entry, while the places say what was wrong."""
    a_id, a_key = await omni.tenant("a")
    person = "Alice.Smith@example.com"
    tenant_tries = [
        ("POST", "/v1/gdpr/requests", {"subject": person, "kind": "forget-me"}, 422),
        ("POST", "/v1/gdpr/requests", {"subject": "p-1", "kind": "access", person: 1}, 422),
        ("POST", "/v1/gdpr/requests", {"subject": "p-1", "kind": "access", "johnsmith": 1}, 422),  # any shape
        ("POST", f"/v1/tenants/{person}/keys", {"label": person}, 404),
        ("PUT", f"/v1/plans/{person}", {"entitlements": []}, 403),
    ]
    admin_tries = [
        ("POST", "/v1/tenants", {"name": person, "plan": person, "extra": {person: person}}, 422),
        ("PUT", f"/v1/tenants/{person}/plan", {"plan": "pro"}, 404),
        ("PUT", "/v1/tenants/4915112345678/plan", {"plan": "pro"}, 404),  # a tenant's id is a UUID
        ("PUT", f"/v1/tenants/{a_id}/quotas/tokens?{person}=1", {"limit": 5, "period": "DAY"}, 422),
        ("PUT", f"/v1/tenants/{a_id}/quotas/tokens?annlee=1", {"limit": 5, "period": "DAY"}, 422),
        ("POST", "/v1/meters", {"slug": "calls", "event_type": "request", "aggregation": "COUNT", "note": person}, 422),
        ("PUT", "/v1/data-classes/chat", {"personal": [f"$.data.{person}["]}, 422),
    ]
    for key, tries in ((a_key, tenant_tries), (ADMIN, admin_tries)):
        for method, path, body, status in tries:
            response = await omni.client.request(method, path, json=body, headers=omni.auth(key))
            assert response.status_code == status, (path, response.text)
    await omni.settle()
    for key in (a_key, ADMIN):
        chain = await exported(omni, key)
        for sent in (person, "Alice", "example.com", "johnsmith", "4915112345678", "annlee"):
            assert sent.encode() not in chain, (sent, chain)
    refused = (await listed(omni, a_key, outcome="rejected"))["data"]
    assert [(e["action"], e["resource"], e["reason"]) for e in refused] == [
        ("gdpr.request.receive", "gdpr/requests", "422 Invalid request (invalid-body): body.kind enum"),
        ("gdpr.request.receive", "gdpr/requests", "422 Invalid request (invalid-body): body.* extra_forbidden"),
        ("gdpr.request.receive", "gdpr/requests", "422 Invalid request (invalid-body): body.* extra_forbidden"),
        ("api_key.issue", "tenants/*/keys", "404 Not found"),
        ("plan.put", "plans/*", "403 Forbidden"),
    ]
    platform = (await listed(omni, ADMIN, outcome="rejected"))["data"]
    assert [(e["action"], e["resource"], e["reason"].split(":")[0]) for e in platform] == [
        ("tenant.create", "tenants", "422 Invalid request (invalid-body)"),
        ("tenant.plan.assign", "tenants/*/plan", "404 Not found"),
        ("tenant.plan.assign", "tenants/*/plan", "404 Not found"),
        ("quota.override.set", f"tenants/{a_id}/quotas/tokens", "422 Unknown query parameter (unknown-parameter)"),
        ("quota.override.set", f"tenants/{a_id}/quotas/tokens", "422 Unknown query parameter (unknown-parameter)"),
        ("meter.define", "meters", "422 Invalid request (invalid-body)"),
        ("data_class.put", "data-classes/chat", platform[6]["reason"].split(":")[0]),
    ]
    assert platform[3]["reason"].endswith(": query.* unknown_parameter"), platform[3]
    assert platform[5]["reason"].endswith(": body.* extra_forbidden"), platform[5]
    assert platform[6]["reason"].startswith("422 ") and "body.personal" in platform[6]["reason"], platform[6]
