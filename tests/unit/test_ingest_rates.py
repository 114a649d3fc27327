"""The per-tenant ingest bucket: a second's worth at most (never less than a batch), refilled with
time, a batch taken whole or not at all, each tenant on its own."""

from __future__ import annotations

from api.ingest_rates import IngestRates


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_tenant_sends_a_seconds_worth_then_waits_for_the_refill() -> None:
    clock = Clock()
    rates = IngestRates(2000, batch=1000, clock=clock)
    assert [rates.wait_for("a", 1000) for _ in range(3)] == [0, 0, 1]  # the third batch waits half a second, rounded up
    assert rates.wait_for("b", 1000) == 0, "another tenant's bucket is its own"
    assert rates.empty("a") and not rates.empty("b")
    clock.now += 0.25
    assert rates.wait_for("a", 1000) == 1 and rates.wait_for("a", 500) == 0  # refused batches took nothing
    clock.now += 10
    assert rates.wait_for("a", 1000) == 0 and rates.wait_for("a", 1000) == 0 and rates.wait_for("a", 1) == 1, (
        "full at a second's worth"
    )


def test_a_rate_below_a_batch_still_lets_a_batch_through_and_tells_the_wait() -> None:
    clock = Clock()
    rates = IngestRates(100, batch=1000, clock=clock)
    assert rates.wait_for("a", 1000) == 0
    assert rates.wait_for("a", 1000) == 10  # 1,000 events at 100 a second
    clock.now += 9.99
    assert rates.wait_for("a", 1000) == 1
    clock.now += 0.01
    assert rates.wait_for("a", 1000) == 0


def test_no_limit() -> None:
    rates = IngestRates(0, batch=1000, clock=Clock())
    assert all(rates.wait_for("a", 1000) == 0 for _ in range(100)) and not rates.empty("a")


def test_events_the_log_refused_are_given_back() -> None:
    rates = IngestRates(1000, batch=1000, clock=Clock())
    assert rates.wait_for("a", 1000) == 0 and rates.wait_for("a", 1000) == 1
    rates.give_back("a", 1000)  # the log was away: nothing of the batch was recorded
    assert rates.wait_for("a", 1000) == 0
    rates.give_back("a", 5000)
    assert rates.wait_for("a", 1000) == 0 and rates.wait_for("a", 1) == 1, "never more than the bucket holds"
