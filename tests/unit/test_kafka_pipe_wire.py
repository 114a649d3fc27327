"""The produce responses the pipe reads (streams.kafka_pipe._produce_errors), as aiokafka's own
protocol classes encode them for every version the pipe speaks."""

from __future__ import annotations

import struct

import pytest
from aiokafka.protocol.produce import ProduceResponse_v3, ProduceResponse_v5, ProduceResponse_v8

from streams.kafka_pipe import _produce_errors

ENTRIES = [("a", 0, 0), ("a", 2, 45), ("bb", 1, 6)]


def _frame(version: int, correlation_id: int) -> bytes:
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for topic, partition, error in ENTRIES:
        by_topic.setdefault(topic, []).append((partition, error))
    if version == 3:
        topics = [(t, [(p, e, 42, -1) for p, e in ps]) for t, ps in by_topic.items()]
        body = ProduceResponse_v3(topics, 0).encode()
    elif version == 5:
        topics = [(t, [(p, e, 42, -1, 0) for p, e in ps]) for t, ps in by_topic.items()]
        body = ProduceResponse_v5(topics, 0).encode()
    else:
        topics = [
            (t, [(p, e, 42, -1, 0, [(0, "bad record"), (1, None)], None if e == 0 else "no") for p, e in ps])
            for t, ps in by_topic.items()
        ]
        body = ProduceResponse_v8(topics, 0).encode()
    return struct.pack(">i", correlation_id) + body


@pytest.mark.parametrize("version", [3, 5, 8])
def test_produce_responses_are_read_at_every_version_spoken(version: int) -> None:
    frame = _frame(version, 7)
    assert _produce_errors(frame, 7, version) == {("a", 0): 0, ("a", 2): 45, ("bb", 1): 6}
    with pytest.raises(ValueError, match="correlation"):
        _produce_errors(frame, 8, version)
