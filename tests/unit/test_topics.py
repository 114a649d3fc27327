"""Topic names and partitioning: schemas.topics."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.topics import Topics, partition_for


@pytest.mark.parametrize(
    "key, partitions, expected",
    [
        # CRC-32 check values (0xCBF43926, 0x414FA339): any runner in any language must agree.
        ("123456789", 1000, 3421780262 % 1000),
        ("123456789", 7, 5),
        ("123456789", 4, 2),
        ("The quick brown fox jumps over the lazy dog", 4, 1),
        ("The quick brown fox jumps over the lazy dog", 2**32, 1095738169),
        # Pinned for tenant-like keys, so a change of hash would be noticed before it reshuffles the log.
        ("tenant-a", 4, 3),
        ("acme", 4, 2),
        ("00000000-0000-0000-0000-000000000000", 4, 1),
        ("ü", 12, 1),  # hashed as UTF-8
        ("", 4, 0),
        ("anything", 1, 0),
    ],
)
def test_partition_for_fixed_values(key, partitions, expected):
    assert partition_for(key, partitions) == expected


@settings(max_examples=100, deadline=None, database=None)
@given(st.text(max_size=64), st.integers(1, 1024))
def test_partition_for_is_in_range_and_deterministic(key, partitions):
    chosen = partition_for(key, partitions)
    assert 0 <= chosen < partitions
    assert partition_for(key, partitions) == chosen


def test_partition_for_spreads_tenants():
    used = {partition_for(f"tenant-{n}", 4) for n in range(64)}
    assert used == {0, 1, 2, 3}


def test_topic_names_and_partition_counts():
    topics = Topics(prefix="test1", usage_partitions=6)
    assert topics.all() == ("test1.usage", "test1.control", "test1.audit", "test1.notifications", "test1.api_calls")
    assert topics.partitions(topics.control) == 1  # total order of control-plane events
    assert topics.partitions(topics.usage) == 6
    assert topics.partitions(topics.audit) == 6
    assert topics.partitions(topics.api_calls) == 6  # keyed by tenant, like usage
    assert Topics().usage == "omni.usage"
