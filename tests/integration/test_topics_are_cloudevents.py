"""On a real broker: the records Omni appends are CloudEvents in the Kafka binding's structured mode,
which a plain Kafka consumer hands to the CloudEvents SDK, headers and all, whichever way the
producer sent them (one by one, or in batches of the append's own)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from commands.ingest import AdmissionPolicy, admit_encoded, expires_at
from schemas.envelope import Actor, Envelope
from schemas.topics import Topics, partition_for
from streams.kafka_log import OWN_BATCH_FROM, KafkaLog
from streams.redis_dedupe import RedisDedupedSink
from tests.topic_records import assert_readable_by_outsiders

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def admitted(tenant: str, count: int, **extensions: object) -> tuple[list[Envelope], list[bytes]]:
    ids = (str(uuid.uuid4()) for _ in itertools.count())
    events = [
        {"specversion": "1.0", "id": f"{tenant}-{i}", "source": "gw", "type": "inference", "subject": f"u{i % 3}",
         "data": {"tokens": i}, **extensions}
        for i in range(count)
    ]  # fmt: skip
    result = admit_encoded(
        events,
        tenant_id=tenant,
        actor=Actor("key-1", "10.0.0.1", "curl/8"),
        received=datetime.now(UTC),
        policy=AdmissionPolicy(),
        new_id=lambda: next(ids),
        traceparent=TRACEPARENT if extensions else None,
    )
    return result.envelopes, result.values


async def test_a_plain_consumer_hands_omnis_records_to_the_cloudevents_sdk(
    kafka_servers: str, kafka_log: KafkaLog, redis_url: str, topics: Topics, prefix: str
) -> None:
    sink = RedisDedupedSink(kafka_log, redis_url, topics)
    try:
        sent: dict[str, Envelope] = {}
        # One tenant's large request goes out in batches of its own, the others' through the
        # producer's shared batch: both carry each record's headers.
        for tenant, count, extensions in ((f"{prefix}-big", OWN_BATCH_FROM + 10, {}), (f"{prefix}-small", 3, {"region": "eu"})):
            envelopes, values = admitted(tenant, count, **extensions)
            policy = AdmissionPolicy()
            assert await sink.ingest(envelopes, [expires_at(e, policy) for e in envelopes], values) == [True] * count
            sent.update({e.source_id: e for e in envelopes})
    finally:
        await sink.close()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.usage, p) for p in range(topics.usage_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        fetched = []
        while len(fetched) < len(sent):
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                fetched += batch
    finally:
        await consumer.stop()
    assert len(fetched) == len(sent)
    for message in fetched:
        envelope = assert_readable_by_outsiders(message.headers, message.key, message.value)
        assert envelope == sent[envelope.source_id]
        assert message.key.decode() == envelope.tenant_id
        assert message.partition == partition_for(envelope.tenant_id, topics.usage_partitions)
        assert b"10.0.0.1" not in message.value and b"curl" not in message.value
    traced = [m for m in fetched if dict(m.headers).get("traceparent") == TRACEPARENT.encode()]
    assert len(traced) == 3

    # Omni's own reader gives the same records, headers included.
    for partition in range(topics.usage_partitions):
        ours = await kafka_log.read(topics.usage, partition, 0, 1000)
        theirs = sorted((m.offset, m.value, tuple(m.headers)) for m in fetched if m.partition == partition)
        assert [(r.offset, r.value, r.headers) for r in ours] == theirs
