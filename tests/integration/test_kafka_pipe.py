"""The pipe for small appends (streams.kafka_pipe) against a real broker: each record once, in order,
grouped while a request is in flight; refusals sent again under a new producer id; a lost or silent
connection failing what was in flight, and the next append landing."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.topics import Topics, partition_for
from streams.kafka_log import KafkaLog
from streams.kafka_pipe import ProducePipe, _produce_errors
from streams.log import LogUnavailable, Outgoing
from tests.integration.conftest import OwnBroker

pytestmark = pytest.mark.kafka


def _pipe(log: KafkaLog) -> ProducePipe:
    assert log._pipe is not None
    return log._pipe


async def test_concurrent_small_appends_land_once_each_in_order_and_share_requests(kafka_log: KafkaLog, topics: Topics) -> None:
    writers, each = 50, 30

    async def writer(n: int) -> None:
        for i in range(each):
            headers = (("content-type", b"application/cloudevents+json"), ("writer", f"{n}".encode()))
            await kafka_log.append(topics.usage, [Outgoing(f"tenant-{n % 7}", f"{n}:{i}".encode(), headers)])

    await asyncio.gather(*(writer(n) for n in range(writers)))

    seen: dict[int, list[int]] = defaultdict(list)
    total = 0
    for partition in range(topics.usage_partitions):
        for record in await kafka_log.read(topics.usage, partition, 0, 10_000):
            n, i = map(int, record.value.decode().split(":"))
            assert partition == partition_for(f"tenant-{n % 7}", topics.usage_partitions)
            assert record.key == f"tenant-{n % 7}"
            assert dict(record.headers) == {"content-type": b"application/cloudevents+json", "writer": f"{n}".encode()}
            seen[n].append(i)
            total += 1
    assert total == writers * each  # nothing lost, nothing twice
    assert all(seen[n] == list(range(each)) for n in range(writers))  # each writer's records in its order
    # 1,500 appends, 50 at a time: those that came while a request was out left together
    assert _pipe(kafka_log)._correlation < writers * each


async def test_a_refused_sequence_goes_again_under_a_new_producer_id(kafka_log: KafkaLog, topics: Topics) -> None:
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"first")])
    pipe = _pipe(kafka_log)
    first_producer = pipe._producer
    partition = partition_for("tenant-a", topics.usage_partitions)
    pipe._sequences[(topics.usage, partition)] += 5  # a gap the broker refuses: OUT_OF_ORDER_SEQUENCE_NUMBER

    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"second")])

    assert pipe._producer is not None and pipe._producer != first_producer  # refused, then sent under a new id
    values = [r.value for r in await kafka_log.read(topics.usage, partition, 0, 100)]
    assert values == [b"first", b"second"]


async def test_a_lost_connection_fails_what_was_in_flight_and_the_next_append_lands(kafka_log: KafkaLog, topics: Topics) -> None:
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"before")])
    pipe = _pipe(kafka_log)
    partition = partition_for("tenant-a", topics.usage_partitions)
    first_producer = pipe._producer
    in_flight = pipe.send(topics.usage, partition, [(b"tenant-a", b"cut", [])])
    await asyncio.sleep(0)  # written at the end of the loop's turn
    (link,) = pipe._links.values()
    assert link.in_flight and link.transport is not None
    link.transport.abort()

    with pytest.raises(LogUnavailable, match="lost"):
        await in_flight
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"after")])

    assert pipe._producer != first_producer  # what was in flight may have landed: its sequences are not guessed
    values = [r.value for r in await kafka_log.read(topics.usage, partition, 0, 100)]
    assert values[0] == b"before" and values[-1] == b"after"
    assert values[1:-1] in ([], [b"cut"])  # the cut one at most once


async def test_a_silent_broker_fails_the_append_by_the_timeout_and_an_absent_one_at_once(tmp_path: Path) -> None:
    broker = OwnBroker(tmp_path / "run")
    broker.run("start")
    producer: AIOKafkaProducer | None = None
    pipe: ProducePipe | None = None
    paused = False
    pid = int((tmp_path / "run" / "kafka" / "kafka.pid").read_text())
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.servers)
        await admin.start()
        await admin.create_topics([NewTopic("pipe-test", 1, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=broker.servers, acks="all", enable_idempotence=True)
        await producer.start()
        await producer.partitions_for("pipe-test")
        pipe = ProducePipe(producer.client, timeout=1.0)
        await pipe.send("pipe-test", 0, [(b"k", b"one", [])])

        os.kill(pid, signal.SIGSTOP)
        paused = True
        await _stopped(pid)
        started = time.monotonic()
        with pytest.raises(LogUnavailable, match="did not answer"):
            await pipe.send("pipe-test", 0, [(b"k", b"two", [])])
        assert time.monotonic() - started < 3.0  # the timeout (1 s), checked every quarter of it
        os.kill(pid, signal.SIGCONT)
        paused = False
        await pipe.send("pipe-test", 0, [(b"k", b"three", [])])  # a new connection and producer id

        broker.run("stop")
        started = time.monotonic()
        with pytest.raises(LogUnavailable):
            await pipe.send("pipe-test", 0, [(b"k", b"four", [])])
        assert time.monotonic() - started < 3.0
    finally:
        if paused:
            os.kill(pid, signal.SIGCONT)
        if pipe is not None:
            await pipe.close()
        if producer is not None:
            await producer.stop()
        broker.run("stop")


async def test_an_append_to_every_partition_leaves_in_one_request(kafka_log: KafkaLog, topics: Topics) -> None:
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"warm")])
    pipe = _pipe(kafka_log)
    before = pipe._correlation
    tenants = {partition_for(f"t{i}", topics.usage_partitions): f"t{i}" for i in range(50)}
    assert len(tenants) == topics.usage_partitions

    await kafka_log.append(topics.usage, [Outgoing(tenant, b"x") for tenant in tenants.values()])

    assert pipe._correlation == before + 1


async def test_a_record_the_broker_refuses_fails_alone_and_the_next_lands(kafka_log: KafkaLog, topics: Topics) -> None:
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"first")])
    pipe = _pipe(kafka_log)
    first_producer = pipe._producer
    with pytest.raises(LogUnavailable, match="refused"):  # MESSAGE_TOO_LARGE: past the broker's 1 MiB
        await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"x" * 1_100_000)])
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"third")])  # a new producer id: no sequence left out

    assert pipe._producer != first_producer
    partition = partition_for("tenant-a", topics.usage_partitions)
    assert [r.value for r in await kafka_log.read(topics.usage, partition, 0, 100)] == [b"first", b"third"]


async def test_an_append_with_no_leader_to_take_it_fails_by_its_deadline(kafka_log: KafkaLog, topics: Topics) -> None:
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"first")])
    assert kafka_log._producer is not None
    pipe = ProducePipe(kafka_log._producer.client, timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(LogUnavailable, match="did not take"):
            await pipe.send(topics.usage, topics.usage_partitions + 5, [(b"k", b"v", [])])  # no such partition
        assert time.monotonic() - started < 3.0
        assert not pipe._queue
    finally:
        await pipe.close()


async def test_closing_while_a_refused_append_waits_to_go_again_fails_it(kafka_log: KafkaLog, topics: Topics) -> None:
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"first")])
    pipe = _pipe(kafka_log)
    partition = partition_for("tenant-a", topics.usage_partitions)
    pipe._sequences[(topics.usage, partition)] += 5  # refused (out of order), then sent again after a pause
    refused = pipe.send(topics.usage, partition, [(b"tenant-a", b"second", [])])
    while pipe._producer is not None:  # the refusal came back
        await asyncio.sleep(0.001)
    await pipe.close()
    with pytest.raises(LogUnavailable, match="closed"):
        await refused


async def _stopped(pid: int) -> None:
    """Until every thread of the process is stopped: the signal reaches a thread busy on the other
    core only when it is next scheduled, and a request written meanwhile could still be answered."""
    tasks = Path(f"/proc/{pid}/task")
    while not all(_state(task / "stat") in ("T", "t", None) for task in tasks.iterdir()):
        await asyncio.sleep(0.01)


def _state(stat: Path) -> str | None:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
        return None


async def test_a_closed_pipe_refuses_and_fails_what_waits(kafka_log: KafkaLog, topics: Topics) -> None:
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"one")])
    pipe = _pipe(kafka_log)
    await pipe.close()
    with pytest.raises(LogUnavailable, match="closed"):
        await pipe.send(topics.usage, 0, [(b"tenant-a", b"two", [])])


def _response(version: int, correlation_id: int, partitions: list[tuple[str, int, int]]) -> bytes:
    """A produce response as the broker writes versions 3 to 8."""
    by_topic: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for topic, partition, error in partitions:
        by_topic[topic].append((partition, error))
    out = struct.pack(">ii", correlation_id, len(by_topic))
    for topic, entries in by_topic.items():
        out += struct.pack(">h", len(topic)) + topic.encode() + struct.pack(">i", len(entries))
        for partition, error in entries:
            out += struct.pack(">ihqq", partition, error, 42, -1)
            if version >= 5:
                out += struct.pack(">q", 0)
            if version >= 8:
                message = b"bad record"
                out += struct.pack(">iih", 1, 0, len(message)) + message + struct.pack(">h", -1)
    return out + struct.pack(">i", 0)  # throttle time


@pytest.mark.parametrize("version", [3, 5, 8])
def test_produce_responses_are_read_at_every_version_spoken(version: int) -> None:
    frame = _response(version, 7, [("a", 0, 0), ("a", 2, 45), ("bb", 1, 6)])
    assert _produce_errors(frame, 7, version) == {("a", 0): 0, ("a", 2): 45, ("bb", 1): 6}
    with pytest.raises(ValueError, match="correlation"):
        _produce_errors(frame, 8, version)
