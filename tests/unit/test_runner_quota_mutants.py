"""Plans and quota overrides folded by the catalog (embedded mode, end to end from the control plane):
the views hold each change, each change sweeps the thresholds it makes reached; and a batch folded
again past what the quota ledger counted adds only its new facts; a drain waits out a rebuild of the
counters until its deadline; build_runner's wiring; an SLO defined after its events is caught up.
Written for the mutants `make mutation` found alive in streams/projectors.py (_write_plan_change,
_sweep_thresholds, _facts_counter) and streams/runner.py (drain, catch_up, build_runner)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from omni import failpoints
from omni.audit_keys import signing_key
from omni.settings import Settings
from projections.audit_chain import EMPTY
from projections.quotas import Quota, period_of
from projections.slos import GoodTotal
from schemas.envelope import Envelope, encode
from schemas.plans import Entitlement, Period, PlanBody
from schemas.slos import SloBody
from schemas.topics import Topics
from stores import audit as audit_store
from stores import plans as plan_store
from stores import quotas as quota_views
from stores import slos as slo_store
from stores.database import SqliteDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA
from streams.embedded_log import EmbeddedLog
from streams.embedded_quotas import EmbeddedQuotaLedger
from streams.log import Outgoing
from streams.quota_ledger import Rebuilding
from streams.runner import Runner, build_runner
from tests.unit import test_runner_embedded
from tests.unit.test_runner_embedded import COUNT, CTX, Embedded, consume_of_one_call, thresholds, used_now

embedded = test_runner_embedded.embedded  # the fixture: the embedded stack, control plane to views

CALLS = Entitlement(meter="calls", limit=Decimal(10), period=Period.MONTH, thresholds=[50, 100])
METERED = PlanBody.model_validate(
    {
        "name": "Metered",
        "entitlements": [CALLS],
        "currency": "USD",
        "fee": "10.00",
        "prices": [{"meter": "calls", "model": "per_unit", "unit_price": "0.01"}],
    }
)


def periods_and_thresholds(embedded: Embedded, tenant: str) -> list[tuple[str, int]]:
    rows = embedded.read(lambda tx: quota_views.notifications(tx, tenant, 100, None))
    return sorted((str(row[4]), int(row[5])) for row in rows)


async def test_plans_and_overrides_are_folded_and_each_change_sweeps_its_thresholds(embedded: Embedded) -> None:
    acme, _ = embedded.control.create_tenant(CTX, "acme", "metered")
    other, _ = embedded.control.create_tenant(CTX, "other", "metered")
    tenant = str(acme.id)
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await used_now(embedded, tenant, 6)
    await used_now(embedded, str(other.id), 5, first=100)
    await embedded.runner.drain()
    embedded.control.put_plan(CTX, "metered", METERED)  # published for tenants already on it
    await embedded.relay.relay_once()
    await embedded.runner.drain()

    row = embedded.read(lambda tx: plan_store.plan(tx, "metered"))
    assert row is not None
    assert (row[0], row[1], row[2], row[3]) == ("metered", 1, "Metered", [CALLS])
    assert row[5] == {
        "currency": "USD", "fee": "10.00", "prices": [{"meter": "calls", "model": "per_unit", "unit_price": "0.01", "included": "0"}],
    }  # fmt: skip
    assert embedded.read(lambda tx: plan_store.tenants_on(tx, "metered")) == sorted([tenant, str(other.id)])
    assert thresholds(embedded, tenant) == [50]  # 6 of 10 when the plan came: each tenant on it swept
    assert thresholds(embedded, str(other.id)) == [50]

    lower = Entitlement(meter="calls", limit=Decimal(6), period=Period.DAY, thresholds=[100])
    embedded.control.set_quota_override(CTX, tenant, lower)
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    assert embedded.read(lambda tx: plan_store.quotas_of(tx, tenant)) == {"calls": Quota(lower, "override", "metered")}
    now = datetime.now(UTC) - timedelta(seconds=5)
    assert periods_and_thresholds(embedded, tenant) == [  # the override's 100 % of 6 today, as of the change
        (period_of(now, Period.DAY).text, 100),
        (period_of(now, Period.MONTH).text, 50),
    ]

    embedded.control.remove_quota_override(CTX, tenant, "calls")
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    assert embedded.read(lambda tx: plan_store.quotas_of(tx, tenant)) == {"calls": Quota(CALLS, "plan", "metered")}


async def test_a_batch_folded_again_past_the_ledgers_mark_adds_only_its_new_facts(embedded: Embedded) -> None:
    ledger = EmbeddedQuotaLedger(embedded.log, keep=timedelta(days=1))
    await ledger.start()
    runner = build_runner(embedded.settings, embedded.db, embedded.log, ledger=ledger)  # batches of 7
    acme, _ = embedded.control.create_tenant(CTX, "acme", "free")
    tenant = str(acme.id)
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await runner.drain()
    month = period_of(datetime.now(UTC) - timedelta(seconds=5), Period.MONTH)
    await used_now(embedded, tenant, 5)  # offsets 0-4
    failpoints.arm(failpoints.METERS_BEFORE_COMMIT)  # the ledger counts 5 and marks 5; the views' commit fails
    try:
        with pytest.raises(failpoints.FailpointHit):
            await runner.step()
    finally:
        failpoints.disarm_all()
    assert await ledger.used(tenant, "calls", month) == 5
    await used_now(embedded, tenant, 1, first=5)  # offset 5: a fact
    outcome = await ledger.consume(consume_of_one_call(tenant, "req-1"))  # offset 6: counted as decided
    assert outcome.decision.used == 6
    await runner.drain()  # offsets 0-6 folded again: only offset 5 is new to the ledger
    assert await ledger.used(tenant, "calls", month) == 7
    assert embedded.total("calls", tenant) == 7


class RebuildingFirst:
    """The embedded ledger, answering its first `times` batches as Redis's ledger does while it rebuilds."""

    def __init__(self, ledger: EmbeddedQuotaLedger, times: int) -> None:
        self.ledger, self.times = ledger, times

    def add_facts(self, topic, partition, start, end, counted, generation):  # type: ignore[no-untyped-def]
        if self.times:
            self.times -= 1
            raise Rebuilding("the quota counters are being rebuilt")
        self.ledger.add_facts(topic, partition, start, end, counted, generation)


async def test_a_drain_waits_out_a_rebuild_of_the_counters_until_its_deadline(embedded: Embedded) -> None:
    ledger = EmbeddedQuotaLedger(embedded.log, keep=timedelta(days=1))
    await ledger.start()
    acme, _ = embedded.control.create_tenant(CTX, "acme", "free")
    tenant = str(acme.id)
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await used_now(embedded, tenant, 3)
    patient = build_runner(embedded.settings, embedded.db, embedded.log, ledger=RebuildingFirst(ledger, 2))
    await patient.drain(wait_for_counters=30.0)  # two rebuilding answers, then folded
    assert embedded.total("calls", tenant) == 3
    await used_now(embedded, tenant, 1, first=3)
    hasty = build_runner(embedded.settings, embedded.db, embedded.log, ledger=RebuildingFirst(ledger, 1))
    with pytest.raises(Rebuilding):
        await hasty.drain(wait_for_counters=0.0)
    assert embedded.total("calls", tenant) == 3


@pytest.mark.parametrize("mode", ["embedded", "kafka"])
def test_build_runner_gives_both_meter_folds_the_ledger_and_the_audit_fold_its_key_and_spacing(tmp_path: Path, mode: str) -> None:
    settings = Settings(mode=mode, data_dir=tmp_path, audit_checkpoint_every=7)
    db = SqliteDatabase(tmp_path / "views.sqlite")
    db.migrate(VIEW_SCHEMA)
    log = EmbeddedLog(tmp_path / "log.sqlite", Topics(prefix="w", usage_partitions=1))
    ledger = EmbeddedQuotaLedger(log, keep=timedelta(days=1))
    runner = build_runner(settings, db, log, ledger=ledger)
    assert runner.meters.ledger is ledger and runner.api_calls is not None and runner.api_calls.ledger is ledger
    assert runner.audit is not None and runner.audit.every == 7
    key = signing_key(settings, db)  # the one kept (data directory, or the views in Kafka mode)
    assert runner.audit.key.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    db.close()


async def test_an_slo_defined_after_its_events_is_caught_up_in_batches(embedded: Embedded) -> None:
    acme, _ = embedded.control.create_tenant(CTX, "acme", "free")
    tenant = str(acme.id)
    now = datetime.now(UTC) - timedelta(seconds=5)
    statuses = [200] * 8 + [500] * 3  # 11 events: caught up in batches of 7 and 4
    await embedded.log.append(
        embedded.log.topics.usage,
        [Outgoing(tenant, encode(Envelope(
            id=f"s-{i}", type="call", tenant_id=tenant, source="gw", source_id=f"s{i}", event_time=now,
            recorded_time=now, data={"status": status},
        ))) for i, status in enumerate(statuses)],
    )  # fmt: skip
    await embedded.relay.relay_once()
    await embedded.runner.drain()  # folded before any SLO counts them
    body = SloBody.model_validate(
        {"event_type": "call", "sli": "availability", "status_property": "$.data.status", "objective": 99, "window": "30d"}
    )
    embedded.control.put_slo(CTX, "api", body)
    await embedded.relay.relay_once()
    # its definition, its owner's SLO names (opened, added), its audit entry, 7 events caught up
    first = await embedded.runner.step(everything=True)
    assert (first, await embedded.runner.step(everything=True), await embedded.runner.step(everything=True)) == (11, 4, 0)
    span = {"all": (0, int(now.timestamp()) + 60)}
    assert embedded.read(lambda tx: slo_store.counts(tx, "_platform/api/1", span)) == {"all": GoodTotal(8, 11)}
    await embedded.log.append(
        embedded.log.topics.usage,
        [Outgoing(tenant, encode(Envelope(
            id=f"l-{i}", type="call", tenant_id=tenant, source="gw", source_id=f"l{i}", event_time=now,
            recorded_time=now, data={"status": 503},
        ))) for i in range(2)],
    )  # fmt: skip
    await embedded.runner.drain()  # live now: folded with the meters
    assert embedded.read(lambda tx: slo_store.counts(tx, "_platform/api/1", span)) == {"all": GoodTotal(8, 13)}


async def test_a_chain_longer_than_a_batch_is_linked_whole(embedded: Embedded) -> None:
    acme, _ = embedded.control.create_tenant(CTX, "acme", "free")
    tenant = str(acme.id)
    for n in range(9):  # with the creation, 10 audit entries in one chain: batches of 7 and 3
        embedded.control.issue_key(CTX, tenant, f"key-{n}")
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    assert embedded.read(lambda tx: audit_store.heads(tx, [tenant]))[tenant].length == 10


async def test_the_audit_topic_is_folded_at_most_once_a_second_but_drained_whole(embedded: Embedded) -> None:
    clock = [1000.0]
    built = embedded.runner
    runner = Runner(
        embedded.log, built.catalog, built.meters, batch_size=7, api_calls=built.api_calls, audit=built.audit,
        clock=lambda: clock[0],
    )  # fmt: skip
    acme, _ = embedded.control.create_tenant(CTX, "acme", "free")
    tenant = str(acme.id)

    def chain() -> int:
        return embedded.read(lambda tx: audit_store.heads(tx, [tenant])).get(tenant, EMPTY).length

    await embedded.relay.relay_once()
    await runner.step()  # due at once: the creation's entry
    assert chain() == 1
    embedded.control.issue_key(CTX, tenant, "second")
    await embedded.relay.relay_once()
    clock[0] = 1000.5
    await runner.step()
    assert chain() == 1  # not a second since the last fold
    clock[0] = 1001.0
    await runner.step()
    assert chain() == 2  # a second later, to the instant
    embedded.control.issue_key(CTX, tenant, "third")
    await embedded.relay.relay_once()
    await runner.step(everything=True)
    assert chain() == 3  # everything: whenever asked


async def test_the_usage_fold_notifies_a_daily_quota_in_its_day_past_events_no_quota_counts(embedded: Embedded) -> None:
    daily = Entitlement(meter="calls", limit=Decimal(4), period=Period.DAY, thresholds=[50])
    embedded.control.define_meter(CTX, COUNT)
    embedded.control.put_plan(CTX, "daily", PlanBody(entitlements=[daily]))
    acme, _ = embedded.control.create_tenant(CTX, "acme", "daily")
    tenant = str(acme.id)
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    await used_now(embedded, tenant, 1, first=0, type_="other")  # in the same batch, no quota counts it
    await used_now(embedded, tenant, 2, first=1)
    await embedded.runner.drain()
    day = period_of(datetime.now(UTC) - timedelta(seconds=5), Period.DAY)
    assert periods_and_thresholds(embedded, tenant) == [(day.text, 50)]
