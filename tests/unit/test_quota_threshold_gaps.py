"""The three gaps `make mutation` left (ops/mutation/equivalent.md, "Known gaps"), each held by a
test in embedded mode, control plane to views:

- a daily quota's usage before a batch is its day's, not its month's (`_notify_thresholds`);
- a tenant with a quota on one of two meters of one event type is checked on the meter it has,
  whichever order the meters come in (`_notify_thresholds`);
- a step's catch-up counts what the meters and the SLOs folded together (`Runner.catch_up`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from schemas.envelope import Envelope, encode
from schemas.plans import Entitlement, Period, PlanBody
from schemas.slos import SloBody
from schemas.topics import partition_for
from stores import quotas as quota_views
from streams.log import Outgoing
from tests.unit import test_runner_embedded
from tests.unit.test_runner_embedded import COUNT, CTX, ON_0, ON_1, TOKENS, Embedded, use

embedded = test_runner_embedded.embedded  # the fixture: the embedded stack, control plane to views


async def calls_at(embedded: Embedded, tenant: str, moment: datetime, n: int, *, first: int, tokens: int = 1) -> None:
    await embedded.log.append(
        embedded.log.topics.usage,
        [Outgoing(tenant, encode(Envelope(
            id=f"id-{tenant[:4]}-{i}", type="call", tenant_id=tenant, source="gw", source_id=f"e{i}", event_time=moment,
            recorded_time=moment, data={"tokens": tokens},
        ))) for i in range(first, first + n)],
    )  # fmt: skip


def notified(embedded: Embedded, tenant: str) -> list[tuple[str, str, int]]:
    """(meter, period, threshold) of each notification the tenant has."""
    rows = embedded.read(lambda tx: quota_views.notifications(tx, tenant, 100, None))
    return sorted((str(row[3]), str(row[4]), int(row[5])) for row in rows)


async def test_a_daily_quota_counts_its_own_day_not_the_days_before_it_in_the_month(embedded: Embedded) -> None:
    tenant, _ = embedded.control.create_tenant(CTX, "acme", "free")
    embedded.control.define_meter(CTX, COUNT)
    daily = Entitlement(meter="calls", limit=Decimal(10), period=Period.DAY, thresholds=[50, 100])
    embedded.control.put_plan(CTX, "daily", PlanBody(entitlements=[daily]))
    embedded.control.assign_plan(CTX, str(tenant.id), "daily")
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    # Event time decides the day, whenever the fold runs: two days of one month, 6 calls each, the
    # 11th's in two batches (4, then 2), so the second batch's usage before it is the day's 4.
    tenth, eleventh = datetime(2026, 11, 10, 12, tzinfo=UTC), datetime(2026, 11, 11, 12, tzinfo=UTC)
    await calls_at(embedded, str(tenant.id), tenth, 6, first=0)
    await embedded.runner.drain()
    await calls_at(embedded, str(tenant.id), eleventh, 4, first=6)
    await embedded.runner.drain()
    await calls_at(embedded, str(tenant.id), eleventh, 2, first=10)
    await embedded.runner.drain()
    # Each day crosses 50 % (6 of 10) and neither reaches 100 %: the 11th starts from 0, not from 6,
    # and its second batch from the day's 4, not from 0.
    periods = [period for _, period, _ in notified(embedded, str(tenant.id))]
    assert [threshold for _, _, threshold in notified(embedded, str(tenant.id))] == [50, 50]
    assert len(set(periods)) == 2 and all("2026-11-1" in p for p in periods), periods


async def test_a_quota_on_one_of_two_meters_of_a_type_is_checked_whichever_comes_first(embedded: Embedded) -> None:
    # Two meters of the event type "call"; one tenant has a quota on the first, the other on the
    # second, so for each tenant one of the two meters has no quota, first or last. The two
    # tenants' events share a partition, so one batch holds both (a batch of one tenant's checks
    # only the meters that tenant has quotas on).
    on_calls, _ = embedded.control.create_tenant(CTX, "calls", "free")
    partitions = embedded.log.topics.partitions(embedded.log.topics.usage)
    on_tokens, _ = embedded.control.create_tenant(CTX, "tokens", "free")
    while partition_for(str(on_tokens.id), partitions) != partition_for(str(on_calls.id), partitions):
        on_tokens, _ = embedded.control.create_tenant(CTX, "tokens", "free")
    embedded.control.define_meter(CTX, COUNT)
    embedded.control.define_meter(CTX, TOKENS)
    calls = Entitlement(meter="calls", limit=Decimal(10), period=Period.MONTH, thresholds=[50, 100])
    tokens = Entitlement(meter="tokens", limit=Decimal(100), period=Period.MONTH, thresholds=[50, 100])
    embedded.control.put_plan(CTX, "calls", PlanBody(entitlements=[calls]))
    embedded.control.put_plan(CTX, "tokens", PlanBody(entitlements=[tokens]))
    embedded.control.assign_plan(CTX, str(on_calls.id), "calls")
    embedded.control.assign_plan(CTX, str(on_tokens.id), "tokens")
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    now = datetime.now(UTC) - timedelta(seconds=5)
    # Below 50 % first (4 of 10 calls; 40 of 100 tokens), then one batch takes each past it, which
    # only the usage before that batch, read for the right meter, shows.
    await calls_at(embedded, str(on_calls.id), now, 4, first=0, tokens=10)
    await calls_at(embedded, str(on_tokens.id), now, 4, first=0, tokens=10)
    await embedded.runner.drain()
    assert notified(embedded, str(on_calls.id)) == notified(embedded, str(on_tokens.id)) == []
    await calls_at(embedded, str(on_calls.id), now, 2, first=4, tokens=10)
    await calls_at(embedded, str(on_tokens.id), now, 2, first=4, tokens=10)
    await embedded.runner.drain()
    assert [(m, t) for m, _, t in notified(embedded, str(on_calls.id))] == [("calls", 50)]  # 6 of 10
    assert [(m, t) for m, _, t in notified(embedded, str(on_tokens.id))] == [("tokens", 50)]  # 60 of 100


async def test_a_catch_up_counts_what_a_late_meter_and_a_late_slo_folded_together(embedded: Embedded) -> None:
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await use(embedded, ON_0, 20)
    await use(embedded, ON_1, 20, first=20)
    await embedded.runner.drain()
    slo = {"event_type": "call", "sli": "latency", "latency_property": "$.data.tokens", "threshold_ms": 5}
    embedded.control.define_meter(CTX, TOKENS)
    embedded.control.put_slo(CTX, "fast", SloBody.model_validate({**slo, "objective": 99, "window": "7d"}))
    await embedded.relay.relay_once()
    await embedded.runner.step(everything=True)  # the definitions, and the first catch-up batch of each
    # Then the meter catches up a batch of 7 (the runner's batch) on each partition; the SLO walks
    # its partitions merged by recorded time, so it takes ON_0's 7 and none of ON_1's, all recorded
    # after them (streams.slos: a partition read in part holds the others back at its last record).
    assert await embedded.runner.catch_up() == (7 + 7) + 7
    await embedded.runner.drain()
    assert (embedded.total("tokens", ON_0), embedded.total("tokens", ON_1)) == (40, 40)
