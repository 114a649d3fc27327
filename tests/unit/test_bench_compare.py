"""ops.bench.compare: which figures it pairs, and how it reduces the pairs."""

from __future__ import annotations

import pytest

from ops.bench.compare import compare, interesting, leaves


def test_leaves_name_rounds_by_their_batch_size() -> None:
    figures = {
        "rounds": [
            {"batch_size": 100, "ours_per_s": 20_000.0, "cpu_micros_per_event": {"kafka-api": 23.1}, "healthy": True},
            {"batch_size": 1000, "ours_per_s": 30_000},
        ],
        "events": 5,
        "note": "text",
    }
    assert dict(leaves(figures)) == {
        "rounds[100].batch_size": 100.0,
        "rounds[100].ours_per_s": 20_000.0,
        "rounds[100].cpu_micros_per_event.kafka-api": 23.1,
        "rounds[1000].batch_size": 1000.0,
        "rounds[1000].ours_per_s": 30_000.0,
        "events": 5.0,
    }


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("rounds[100].ours_per_s", True),
        ("rounds[100].ratio", True),
        ("rounds[100].request_p99_ms", True),
        ("rounds[100].cpu_micros_per_event.postgres", True),
        ("rounds[100].raw_runs_per_s[0]", False),  # the baseline's single runs: their median is raw_per_s
        ("rounds[100].batch_size", False),
        ("memory_kib.end.kafka-api.VmHWM", True),
        ("paced.api_loop.waiting_for_cpu", True),
        ("paced.api_loop.idle", False),
        ("events", False),
    ],
)
def test_only_rates_shares_latencies_and_cpu_are_compared(path: str, kept: bool) -> None:
    assert interesting(path) is kept


def test_the_ratio_is_the_median_of_each_rounds_own_ratio() -> None:
    # The machine slowed down between rounds; each pair still shows ours 10% faster.
    base = [{"x_per_s": 100.0}, {"x_per_s": 50.0}, {"x_per_s": 200.0}]
    ours = [{"x_per_s": 110.0}, {"x_per_s": 55.0}, {"x_per_s": 220.0}]
    ((path, base_median, ours_median, ratio),) = compare(base, ours)
    assert path == "x_per_s" and base_median == 100.0 and ours_median == 110.0
    assert ratio == pytest.approx(1.1)


def test_figures_one_side_lacks_are_left_out() -> None:
    rows = compare([{"a_per_s": 1.0, "b_per_s": 2.0}], [{"a_per_s": 2.0}])
    assert [path for path, *_ in rows] == ["a_per_s"]
