"""A meter after its definition, in both modes: its description changed (nothing else of it), and
its deletion for good: gone from every read, its views dropped, its slug retired, and refused while a
plan or an override names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from streams.replay import Mode, Request
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_meter_watch import live, settings_for, usage, watching
from tests.e2e.test_plans_and_quotas import put_plan

TOKENS = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
CALLS = {"slug": "calls", "event_type": "inference", "aggregation": "COUNT"}


async def patch(omni: Omni, slug: str, body: Any, key: str = ADMIN) -> httpx.Response:
    return await omni.client.patch(f"/v1/meters/{slug}", json=body, headers=omni.auth(key))


async def delete(omni: Omni, slug: str, key: str = ADMIN) -> httpx.Response:
    response = await omni.client.delete(f"/v1/meters/{slug}", headers=omni.auth(key))
    await omni.settle()
    return response


def meter_rows(omni: Omni, slug: str) -> dict[str, int]:
    with omni.platform.db.transaction() as tx:
        return {
            table: int(tx.execute(f"SELECT count(*) FROM {table} WHERE {column}=?", (slug,))[0][0])
            for table, column in (
                ("meter_definitions", "slug"),
                ("meter_windows", "meter"),
                ("meter_totals", "meter"),
                ("meter_offsets", "meter"),
            )
        }


async def audit_actions(omni: Omni) -> list[str]:
    await omni.settle()
    response = await omni.client.get("/v1/audit", params={"tenant": "_platform"}, headers=omni.auth(ADMIN))
    assert response.status_code == 200, response.text
    return [entry["action"] for entry in response.json()["data"]]


async def test_a_meters_description_changes_and_nothing_else_of_it(omni: Omni) -> None:
    await omni.meter(**TOKENS, description="tokens per model")
    _, key = await omni.tenant()
    await omni.settle()
    changed = await patch(omni, "tokens", {"description": "tokens, input and output"})
    assert changed.status_code == 200, changed.text
    assert changed.json() == {**TOKENS, "group_by": {}, "description": "tokens, input and output"}
    await omni.settle()
    read = await omni.client.get("/v1/meters/tokens", headers=omni.auth(key))
    assert read.json()["description"] == "tokens, input and output"
    assert (await patch(omni, "tokens", {"description": None})).json()["description"] is None
    await omni.settle()
    assert (await omni.client.get("/v1/meters", headers=omni.auth(key))).json()["data"][0]["description"] is None

    what_it_counts = await patch(omni, "tokens", {"description": "x", "aggregation": "MAX"})
    assert what_it_counts.status_code == 422
    assert [e["location"] for e in what_it_counts.json()["errors"]] == ["body.aggregation"]
    assert (await patch(omni, "tokens", {})).status_code == 422, "the description is named, even as null"
    assert (await patch(omni, "nothing", {"description": "x"})).status_code == 404
    assert (await patch(omni, "tokens", {"description": "x"}, key=key)).status_code == 403
    assert (await omni.client.get("/v1/meters/tokens", headers=omni.auth(key))).json()["description"] is None
    assert (await audit_actions(omni)).count("meter.describe") >= 2


async def test_a_deleted_meter_is_gone_its_views_dropped_and_its_slug_retired(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await omni.meter(**CALLS)
    _, key = await omni.tenant()
    assert (await omni.send(key, [cloud_event(f"e{i}", data={"tokens": 10}) for i in range(3)])).status_code == 202
    await omni.settle()
    assert min(meter_rows(omni, "tokens").values()) > 0

    assert (await delete(omni, "tokens", key=key)).status_code == 403
    assert (await delete(omni, "tokens")).status_code == 204
    assert meter_rows(omni, "tokens") == {"meter_definitions": 0, "meter_windows": 0, "meter_totals": 0, "meter_offsets": 0}
    assert [m["slug"] for m in (await omni.client.get("/v1/meters", headers=omni.auth(key))).json()["data"]] == ["calls"]
    assert (await omni.client.get("/v1/meters/tokens", headers=omni.auth(key))).status_code == 404
    assert (await omni.client.get("/v1/meters/tokens/query", headers=omni.auth(key))).status_code == 404
    assert (await omni.client.post("/v1/quotas/tokens/consume", json={"amount": 1, "idempotency_key": "k"}, headers=omni.auth(key))).status_code == 404  # fmt: skip
    again = await omni.client.post("/v1/meters", json=TOKENS, headers=omni.auth(ADMIN))
    assert again.status_code == 409 and again.json()["type"].endswith("/meter-deleted"), again.text
    assert (await delete(omni, "tokens")).status_code == 404
    refused = await put_plan(omni, "pro", {"meter": "tokens", "limit": 10, "period": "DAY"})
    assert refused.status_code == 422 and "not defined" in refused.text

    # Usage goes on: the other meter counts it, the deleted one nothing, and a rebuild agrees.
    assert (await omni.send(key, [cloud_event("later", data={"tokens": 10})])).status_code == 202
    await omni.settle()
    assert [row["value"] for row in await omni.query(key, "calls")] == [4]
    assert meter_rows(omni, "tokens")["meter_windows"] == 0
    assert (await omni.platform.replays.replayer.run(Request(mode=Mode.DIFF))).differences == []
    assert "meter.delete" in await audit_actions(omni)


async def test_a_meter_a_plan_or_an_override_names_is_not_deleted(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    await omni.meter(**CALLS)
    await omni.meter(**{**CALLS, "slug": "spare"})
    tenant_id, _ = await omni.tenant()
    priced = {"currency": "USD", "prices": [{"meter": "calls", "model": "per_unit", "unit_price": "0.01"}]}
    response = await omni.client.put(
        "/v1/plans/pro",
        json={"entitlements": [{"meter": "tokens", "limit": 10, "period": "DAY"}], **priced},
        headers=omni.auth(ADMIN),
    )
    assert response.status_code == 201, response.text
    await omni.settle()
    in_use = await delete(omni, "tokens")
    assert in_use.status_code == 409, in_use.text
    assert in_use.json()["type"].endswith("/meter-in-use") and in_use.json()["used_by"] == ["plan:pro"]
    # Its next version prices tokens instead: invoices of the months the first priced are still priced by it.
    revised = await omni.client.put(
        "/v1/plans/pro",
        json={
            "entitlements": [{"meter": "tokens", "limit": 10, "period": "DAY"}],
            "currency": "USD",
            "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "0.01"}],
        },
        headers=omni.auth(ADMIN),
    )
    assert revised.status_code == 200, revised.text
    await omni.settle()
    assert (await delete(omni, "calls")).json()["used_by"] == ["plan:pro"]
    override = await omni.client.put(
        f"/v1/tenants/{tenant_id}/quotas/spare", json={"limit": 5, "period": "DAY"}, headers=omni.auth(ADMIN)
    )
    assert override.status_code == 204, override.text
    await omni.settle()
    assert (await delete(omni, "spare")).json()["used_by"] == [f"override:{tenant_id}"]

    # Named no more: the override removed, a plan whose next version leaves out a meter it never priced.
    removed = await omni.client.delete(f"/v1/tenants/{tenant_id}/quotas/spare", headers=omni.auth(ADMIN))
    assert removed.status_code == 204, removed.text
    await omni.settle()
    assert (await delete(omni, "spare")).status_code == 204
    await omni.meter(**{**CALLS, "slug": "hourly"})
    await put_plan(omni, "lite", {"meter": "hourly", "limit": 5, "period": "DAY"}, status=201)
    assert (await delete(omni, "hourly")).json()["used_by"] == ["plan:lite"]
    await put_plan(omni, "lite", {"meter": "calls", "limit": 5, "period": "DAY"}, status=200)
    assert (await delete(omni, "hourly")).status_code == 204


async def test_who_names_a_meter_is_kept_on_the_meter_itself(omni: Omni) -> None:
    """The views may not hold a plan yet (the relay is a moment behind the event store): the meter's
    own record of who names it refuses the deletion all the same."""
    await omni.meter(**TOKENS)
    await omni.settle()
    omni.platform.control.views_meter_users = None  # only what the event store holds
    assert (await put_plan(omni, "pro", {"meter": "tokens", "limit": 10, "period": "DAY"})).status_code == 201
    refused = await omni.client.delete("/v1/meters/tokens", headers=omni.auth(ADMIN))
    assert refused.status_code == 409 and refused.json()["used_by"] == ["plan:pro"], refused.text


async def test_a_watch_of_a_meter_deleted_ends_with_404(tmp_path: Path) -> None:
    async with live(settings_for("embedded", tmp_path)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant()
        await usage(omni, key, ["first"], 5)
        async with watching(running.url, key) as stream:
            assert await stream.next()
            assert (await delete(omni, "tokens")).status_code == 204
            event, _, problem = await stream.next(timeout=5) or ("", None, None)
            assert event == "problem" and problem["status"] == 404, (event, problem)
            assert await stream.next() is None


async def test_a_plan_racing_a_deletion_does_not_name_the_deleted_meter(omni: Omni, monkeypatch: Any) -> None:
    """The meter deleted between the plan's check of it and the plan's save: the save fails, since
    the name it records goes on the meter as the check read it, and the plan decided again finds
    the meter gone (422)."""
    from commands.control_plane import CommandContext, ControlPlane

    await omni.meter(**TOKENS)
    await omni.settle()
    check = ControlPlane._check_meters
    checks: list[int] = []

    def deleted_right_after(self: ControlPlane, *args: Any, **kwargs: Any) -> Any:
        checks.append(1)
        checked = check(self, *args, **kwargs)
        if len(checks) == 1:
            self.delete_meter(CommandContext(tenant_id=None, key_id="admin"), "tokens")
        return checked

    monkeypatch.setattr(ControlPlane, "_check_meters", deleted_right_after)
    raced = await put_plan(omni, "pro", {"meter": "tokens", "limit": 10, "period": "DAY"})
    assert raced.status_code == 422 and "'tokens' is not defined" in raced.text, raced.text
    assert len(checks) == 2, "decided again after its save lost the race"
    monkeypatch.undo()
    assert (await omni.client.get("/v1/plans/pro", headers=omni.auth(ADMIN))).status_code == 404
    assert (await omni.client.get("/v1/meters/tokens", headers=omni.auth(ADMIN))).status_code == 404


async def test_overrides_of_many_tenants_on_one_meter_at_once_all_stand(omni: Omni) -> None:
    """Each records its tenant on the meter: those that lose the race are decided again, not 409."""
    import asyncio

    await omni.meter(**TOKENS)
    tenants = [(await omni.tenant(f"t{i}"))[0] for i in range(8)]
    await omni.settle()
    answers = await asyncio.gather(
        *(
            omni.client.put(f"/v1/tenants/{t}/quotas/tokens", json={"limit": 5, "period": "DAY"}, headers=omni.auth(ADMIN))
            for t in tenants
        )
    )
    assert [a.status_code for a in answers] == [204] * len(tenants), [a.text for a in answers]
    refused = await delete(omni, "tokens")
    assert sorted(refused.json()["used_by"]) == sorted(f"override:{t}" for t in tenants)


async def test_a_catalog_swap_past_a_meters_deletion_drops_the_meters_rows_too(omni: Omni) -> None:
    """The replay of the catalog alone folds an omni.meter.deleted the live catalog has not folded
    yet; its swap removed the definition but left the meter's buckets and offsets in the meters'
    fold, which no read showed and nothing removed."""
    await omni.meter(**TOKENS)
    _, key = await omni.tenant()
    assert (await omni.send(key, [cloud_event(f"e{i}", data={"tokens": 10}) for i in range(3)])).status_code == 202
    await omni.settle()
    assert (await omni.client.delete("/v1/meters/tokens", headers=omni.auth(ADMIN))).status_code == 204
    while await omni.platform.relay.relay_once():  # on the log, not folded by the live catalog yet
        pass
    assert min(meter_rows(omni, "tokens").values()) > 0
    assert (await omni.platform.replays.replayer.run(Request(("catalog",), Mode.SWAP))).swapped
    assert meter_rows(omni, "tokens") == {"meter_definitions": 0, "meter_windows": 0, "meter_totals": 0, "meter_offsets": 0}
    await omni.settle()
    assert meter_rows(omni, "tokens") == {"meter_definitions": 0, "meter_windows": 0, "meter_totals": 0, "meter_offsets": 0}
    assert (await omni.platform.replays.replayer.run(Request(mode=Mode.DIFF))).differences == []
