"""The pipe for small appends (streams.kafka_pipe) against a real broker: each record once, in order,
grouped while a request is in flight; refusals sent again under a new producer id; a lost or silent
connection failing what was in flight, and the next append landing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from schemas.topics import Topics, partition_for
from streams.kafka_log import KafkaLog
from streams.kafka_pipe import ProducePipe
from streams.log import LogUnavailable, Outgoing
from tests.integration.conftest import OwnBroker

pytestmark = pytest.mark.kafka


def _pipe(log: KafkaLog) -> ProducePipe:
    assert log._pipe is not None
    return log._pipe


async def _after_first(log: KafkaLog, topics: Topics) -> tuple[ProducePipe, int]:
    """The log's pipe once tenant-a's first record went through it (connected, with a producer id),
    and tenant-a's partition."""
    await log.append(topics.usage, [Outgoing("tenant-a", b"first")])
    return _pipe(log), partition_for("tenant-a", topics.usage_partitions)


async def test_concurrent_small_appends_land_once_each_in_order_and_share_requests(kafka_log: KafkaLog, topics: Topics) -> None:
    await kafka_log.append(topics.usage, [Outgoing("tenant-0", b"warm")])
    pipe = _pipe(kafka_log)
    writers, each = 50, 30
    before = pipe._correlation

    async def writer(n: int) -> None:
        """Each writer hands the pipe its appends without waiting for one before the next."""
        key = f"tenant-{n % 7}"
        headers = [("content-type", b"application/cloudevents+json"), ("writer", f"{n}".encode())]
        sent = []
        for i in range(each):
            sent.append(
                pipe.send(
                    topics.usage, partition_for(key, topics.usage_partitions), [(key.encode(), f"{n}:{i}".encode(), headers)]
                )
            )
            if i % 3 == 0:
                await asyncio.sleep(0)  # the writers' appends interleave
        await asyncio.gather(*sent)

    await asyncio.gather(*(writer(n) for n in range(writers)))

    seen: dict[int, list[int]] = defaultdict(list)
    total = 0
    for partition in range(topics.usage_partitions):
        for record in await kafka_log.read(topics.usage, partition, 0, 10_000):
            if record.value == b"warm":
                continue
            n, i = map(int, record.value.decode().split(":"))
            assert partition == partition_for(f"tenant-{n % 7}", topics.usage_partitions)
            assert record.key == f"tenant-{n % 7}"
            assert dict(record.headers) == {"content-type": b"application/cloudevents+json", "writer": f"{n}".encode()}
            seen[n].append(i)
            total += 1
    assert total == writers * each  # nothing lost, nothing twice
    assert all(seen[n] == list(range(each)) for n in range(writers))  # each writer's records in the order handed over
    # 1,500 appends: those that came while a request was out left together
    assert pipe._correlation - before < writers * each / 10


async def test_appends_made_in_one_turn_of_the_loop_leave_in_one_request(kafka_log: KafkaLog, topics: Topics) -> None:
    pipe, partition = await _after_first(kafka_log, topics)
    before = pipe._correlation
    first = pipe.send(topics.usage, partition, [(b"tenant-a", b"one", [])])
    second = pipe.send(topics.usage, partition, [(b"tenant-a", b"two", [])])  # the connection is idle: still together
    await asyncio.gather(first, second)
    assert pipe._correlation == before + 1


async def test_a_refused_sequence_goes_again_under_a_new_producer_id(kafka_log: KafkaLog, topics: Topics) -> None:
    pipe, partition = await _after_first(kafka_log, topics)
    first_producer = pipe._producer
    pipe._sequences[(topics.usage, partition)] += 5  # a gap the broker refuses: OUT_OF_ORDER_SEQUENCE_NUMBER

    refused = pipe.send(topics.usage, partition, [(b"tenant-a", b"second", [])])
    await asyncio.sleep(0)  # written
    later = pipe.send(topics.usage, partition, [(b"tenant-a", b"third", [])])  # waits for the refused one's answer
    await asyncio.gather(refused, later)

    assert pipe._producer is not None and pipe._producer != first_producer  # refused, then sent under a new id
    values = [r.value for r in await kafka_log.read(topics.usage, partition, 0, 100)]
    assert values == [b"first", b"second", b"third"]  # the refused one went again ahead of the later one


async def test_a_retriable_refusal_sends_the_same_batch_again_until_it_is_taken(kafka_servers: str) -> None:
    topic = f"pipe-retry-{os.urandom(4).hex()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
    await producer.start()
    pipe = ProducePipe(producer.client, timeout=10.0)
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await producer.partitions_for(topic)
        await pipe.send(topic, 0, [(b"k", b"first", [])])
        first_producer = pipe._producer
        # Partition 1 does not exist yet; told it is led by the broker, the pipe sends there and
        # the broker answers UNKNOWN_TOPIC_OR_PARTITION, a retriable error.
        pipe._leaders[(topic, 1)] = pipe._leaders[(topic, 0)]
        pending = pipe.send(topic, 1, [(b"k", b"second", [])])
        await asyncio.sleep(0.5)
        assert not pending.done()  # refused, and waiting to go again
        await admin.create_partitions({topic: NewPartitions(2)})
        await pending

        assert pipe._producer == first_producer  # the same batch, producer id and sequence: no new producer
        reader = AIOKafkaConsumer(bootstrap_servers=kafka_servers, auto_offset_reset="earliest")
        await reader.start()
        try:
            reader.assign([TopicPartition(topic, 1)])
            fetched = await reader.getmany(timeout_ms=5000)
            assert [r.value for records in fetched.values() for r in records] == [b"second"]
        finally:
            await reader.stop()
    finally:
        await pipe.close()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()


async def test_a_lost_connection_fails_what_was_in_flight_and_the_next_append_lands(kafka_log: KafkaLog, topics: Topics) -> None:
    pipe, partition = await _after_first(kafka_log, topics)
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
    assert values[0] == b"first" and values[-1] == b"after"
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
        pipe = ProducePipe(producer.client, timeout=10.0)
        await pipe.send("pipe-test", 0, [(b"k", b"one", [])])

        os.kill(pid, signal.SIGSTOP)
        paused = True
        await _stopped(pid)
        pipe._timeout = 1.0  # for this append only: a silent broker is found out within a second or so
        started = time.monotonic()
        with pytest.raises(LogUnavailable, match="did not answer"):
            await pipe.send("pipe-test", 0, [(b"k", b"two", [])])
        assert time.monotonic() - started < 3.0  # the timeout (1 s), checked every quarter of it
        pipe._timeout = 10.0
        os.kill(pid, signal.SIGCONT)
        paused = False
        await pipe.send("pipe-test", 0, [(b"k", b"three", [])])  # a new connection and producer id

        broker.run("stop")
        while pipe._links:  # the broker closed the pipe's connection on its way down
            await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(LogUnavailable, match="could not"):  # no connection to be made, or no producer id
            await pipe.send("pipe-test", 0, [(b"k", b"four", [])])
        assert time.monotonic() - started < 3.0  # at once, not by the timeout
    finally:
        if paused:
            os.kill(pid, signal.SIGCONT)
        if pipe is not None:
            await pipe.close()
        if producer is not None:
            await producer.stop()
        broker.run("stop")


async def test_an_append_to_every_partition_leaves_in_one_request(kafka_log: KafkaLog, topics: Topics) -> None:
    tenants = {partition_for(f"t{i}", topics.usage_partitions): f"t{i}" for i in range(50)}
    assert len(tenants) == topics.usage_partitions
    # Every partition once first: a topic just made may answer NOT_LEADER for a moment (sent again).
    await kafka_log.append(topics.usage, [Outgoing(tenant, b"warm") for tenant in tenants.values()])
    pipe = _pipe(kafka_log)
    before = pipe._correlation

    await kafka_log.append(topics.usage, [Outgoing(tenant, b"x") for tenant in tenants.values()])

    assert pipe._correlation == before + 1


async def test_a_record_the_broker_refuses_fails_alone_and_the_next_lands(kafka_log: KafkaLog, topics: Topics) -> None:
    pipe, partition = await _after_first(kafka_log, topics)
    first_producer = pipe._producer
    other = (partition + 1) % topics.usage_partitions
    too_large, beside = pipe.send_many(
        [
            (topics.usage, partition, [(b"tenant-a", b"x" * 1_100_000, [])]),  # MESSAGE_TOO_LARGE: past the broker's 1 MiB
            (topics.usage, other, [(b"tenant-b", b"beside", [])]),  # in the same request
        ]
    )
    with pytest.raises(LogUnavailable, match="refused"):
        await too_large
    await beside
    before = pipe._correlation
    await kafka_log.append(topics.usage, [Outgoing("tenant-a", b"third")])

    assert pipe._producer != first_producer  # a new producer id: no sequence number left out ...
    assert pipe._correlation == before + 1  # ... so the next append was not refused as out of order
    assert [r.value for r in await kafka_log.read(topics.usage, partition, 0, 100)] == [b"first", b"third"]
    assert [r.value for r in await kafka_log.read(topics.usage, other, 0, 100)] == [b"beside"]


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
    pipe, partition = await _after_first(kafka_log, topics)
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
    pipe, partition = await _after_first(kafka_log, topics)
    in_flight = pipe.send(topics.usage, partition, [(b"tenant-a", b"in flight", [])])
    await asyncio.sleep(0)  # written
    waiting = pipe.send(topics.usage, partition, [(b"tenant-a", b"waiting", [])])  # behind the one in flight
    await pipe.close()
    for future in (in_flight, waiting):
        with pytest.raises(LogUnavailable, match="closed"):
            await future
    with pytest.raises(LogUnavailable, match="closed"):
        await pipe.send(topics.usage, 0, [(b"tenant-a", b"two", [])])
