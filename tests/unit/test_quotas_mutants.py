"""Parts of projections.quotas no other fast test ran (`make mutation` reported their mutants as
having no test): which meters can hold a quota, and the periods a rebuild of the hot counters fills."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from projections.quotas import PeriodKey, is_additive, periods_around
from schemas.meters import Aggregation, MeterDefinition
from schemas.plans import Period


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_only_sum_and_count_meters_are_additive(aggregation: Aggregation) -> None:
    meter = MeterDefinition(
        slug="m",
        event_type="inference",
        aggregation=aggregation,
        value_property=None if aggregation is Aggregation.COUNT else "$.data.v",
    )
    assert is_additive(meter) is (aggregation in (Aggregation.SUM, Aggregation.COUNT))


def day(text: str) -> PeriodKey:
    return PeriodKey.parse(f"D:{text}")


def month(text: str) -> PeriodKey:
    return PeriodKey.parse(f"M:{text}")


@pytest.mark.parametrize(
    ("moment", "periods"),
    [
        (
            datetime(2026, 12, 15, 12, tzinfo=UTC),
            [day("2026-12-14"), day("2026-12-15"), day("2026-12-16"), month("2026-12")],
        ),
        (
            datetime(2026, 12, 31, 23, 30, tzinfo=UTC),
            [day("2026-12-30"), day("2026-12-31"), day("2027-01-01"), month("2026-12"), month("2027-01")],
        ),
        (
            datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
            [day("2026-12-31"), day("2027-01-01"), day("2027-01-02"), month("2026-12"), month("2027-01")],
        ),
        (  # 00:30 at UTC+1 is 23:30 UTC the day before
            datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
            [day("2026-02-27"), day("2026-02-28"), day("2026-03-01"), month("2026-02"), month("2026-03")],
        ),
    ],
)
def test_around_an_instant_are_the_day_before_its_own_and_the_next_and_their_months(
    moment: datetime, periods: list[PeriodKey]
) -> None:
    assert periods_around(moment) == periods
    assert [p.period for p in periods_around(moment)][:3] == [Period.DAY] * 3
