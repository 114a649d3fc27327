"""The log port on Apache Kafka (aiokafka): the adapter for Kafka mode.

It behaves like the embedded log: an item goes to `partition_for(key, n)`,
chosen here rather than by the client's partitioner, so both modes place a
tenant's events on the same partition number; `append` returns only when
every item is acknowledged by all in-sync replicas; `read` is positional.

Connecting is lazy. A broker that is down when the API starts must not stop
the API from booting (it answers 503 until the broker is back), so `start`
only tries once, and every `append`/`read`/`ping` retries the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from omni import metrics
from schemas.topics import Topics, partition_for
from streams.kafka_pipe import ProducePipe, Record
from streams.log import LogRecord, LogUnavailable, Outgoing
from streams.quiet_logs import limit_kafka_client_logs

log = logging.getLogger(__name__)

T = TypeVar("T")

# The log is the system of record: never delete by age or size.
TOPIC_CONFIGS = {"retention.ms": "-1", "retention.bytes": "-1"}
# How long a record waits in the open batch for others before it may leave (the default of
# `kafka_linger_ms`). aiokafka keeps one produce request in flight per broker, so records that
# arrive while one is out wait for it and leave together: concurrent appends batch anyway. A
# linger adds its whole length to every append that finds the broker idle: at 5 ms, a consume's
# append took 6.5 ms at the median (quota_consume, paced at 1,000/s), at 0 ms about 1.
LINGER_MS = 0
# aiokafka keeps one produce request in flight per broker, carrying at most one batch per
# partition, and a send that finds the open batch full waits for it to leave: at the 16 KiB
# default, appending 1,000 records of one tenant took 33 ms (~30 round trips); at 128 KiB, 4 ms.
# Larger batches save little more here (3.4 ms at 1 MiB) but slow the consumers: a fetch takes
# 1 MiB per partition (Faust's and Kafka's default) and only whole batches, so 512 KiB batches
# leave fetches half empty: ingest_kafka end to end, 1,000 events a request, fell by about 30%
# (measured with one worker, before its fetch wait was shortened; 256 KiB: about 12%).
MAX_BATCH_BYTES = 128 * 1024
# From this many records for one partition, an append sends batches of its own, closed so they
# leave at once (no linger): one future per batch instead of one per record, half the CPU or
# less. Fewer records join the producer's open batch, which small concurrent appends share.
OWN_BATCH_FROM = 64
POLL_MS = 100  # one getmany wait inside `read`
FETCH_WAIT_MS = 20
READER_RETRY_BACKOFF_MS = 5


class KafkaLog:
    """EventLog on Kafka. One idempotent producer, one group-less reader consumer."""

    def __init__(
        self, bootstrap_servers: str, topics: Topics, *, produce_timeout: float = 10.0, linger_ms: int = LINGER_MS
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.produce_timeout = produce_timeout
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._pipe: ProducePipe | None = None  # small appends: streams.kafka_pipe
        self._reader: AIOKafkaConsumer | None = None
        self._connecting = asyncio.Lock()  # one connection attempt at a time
        self._reading = asyncio.Lock()  # the reader's assignment and position are shared state
        # One append at a time hands its own batches to a partition, first come first served:
        # see `append`.
        self._enqueueing: defaultdict[tuple[str, int], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._closed = False
        limit_kafka_client_logs()  # aiokafka logs every failed attempt of every client while Kafka is away

    # Lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect if the broker answers; otherwise log and let the next call retry."""
        self._closed = False
        try:
            await self._guard(self._connected(), "connecting to Kafka")
        except LogUnavailable as outage:
            log.warning("Kafka is not reachable yet (%s); will retry on the next append or ping", outage)

    async def close(self) -> None:
        self._closed = True
        async with self._connecting:
            await self._disconnect()

    # EventLog -------------------------------------------------------------------

    async def append(self, topic: str, items: Sequence[Outgoing]) -> None:
        if not items:
            return
        partitions = self.topics.partitions(topic)

        used: list[AIOKafkaProducer] = []  # aiokafka's producer, if this append handed it batches

        async def send_all() -> None:
            producer, _ = await self._connected()
            pipe = self._pipe
            assert pipe is not None
            by_partition: dict[int, list[Outgoing]] = {}
            for item in items:
                by_partition.setdefault(partition_for(item.key, partitions), []).append(item)
            # Send everything first, then wait: the batch travels in few requests.
            acks: list[asyncio.Future[Any]] = []
            few: list[tuple[str, int, list[Record]]] = []
            for partition, group in by_partition.items():
                if len(group) >= OWN_BATCH_FROM:
                    # aiokafka queues one batch per partition; a send_batch finding the slot taken
                    # waits for it to drain and then races every other waiter for it, and its
                    # timeout shrinks by the whole time waited on every lost race: concurrent large
                    # appends to a partition failed with KafkaTimeoutError within seconds. Taking
                    # turns, each append waits for at most one drain per batch.
                    used.append(producer)
                    async with self._enqueueing[(topic, partition)]:
                        acks += await _send_as_batches(producer, topic, partition, group)
                else:  # a few records (a consume's one): one batch through the pipe, a fraction of aiokafka's CPU
                    few.append((topic, partition, [(i.key.encode(), i.value, list(i.headers)) for i in group]))
            if few:
                acks += pipe.send_many(few)
            await (acks[0] if len(acks) == 1 else asyncio.gather(*acks))  # one record (a consume's): no gathering

        try:
            await self._guard(send_all(), f"appending {len(items)} records to {topic}")
        except LogUnavailable:
            # An idempotent producer whose batches were abandoned (timed out, broker gone) has
            # sequence numbers the broker will refuse forever after it returns
            # (OutOfOrderSequence). A fresh producer gets a fresh id and starts clean. (The pipe
            # starts a new producer id itself after any failure: its failures reset nothing here.)
            if used:
                await self._reset(used[0])
            raise
        metrics.labelled(metrics.PRODUCED, topic).inc(len(items))

    async def read(self, topic: str, partition: int, start: int, limit: int) -> list[LogRecord]:
        if limit <= 0:
            return []
        return await self._guard(self._read(TopicPartition(topic, partition), start, limit), f"reading {topic}/{partition}")

    async def scan(
        self, topic: str, starts: dict[int, int], size: int, partitions: Sequence[int] | None = None
    ) -> AsyncIterator[tuple[int, list[LogRecord]]]:
        """Every record of `topic` from `starts` (per partition) to the end as it is now, in chunks of
        up to `size` records of one partition (each partition's in order): for replays. A consumer of
        its own reads every partition at once and fetches ahead while the caller folds, as a plain
        consumer does (`read` seeks, and asks for the end, at every call). `partitions`: only those."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=max(int(self.produce_timeout * 1000), 5000),
        )
        try:
            await self._guard(reader.start(), f"starting a reader of {topic}")
            wanted = range(self.topics.partitions(topic)) if partitions is None else partitions
            tps = {p: TopicPartition(topic, p) for p in wanted}
            ends = {tp.partition: int(o) for tp, o in (await self._guard(reader.end_offsets(list(tps.values())), "ends")).items()}
            left = {p for p, end in ends.items() if starts.get(p, 0) < end}
            reader.assign([tps[p] for p in sorted(left)])
            for p in left:
                reader.seek(tps[p], starts.get(p, 0))
            held: dict[int, list[LogRecord]] = defaultdict(list)
            while left or any(held.values()):
                if left:
                    fetched = await self._guard(reader.getmany(timeout_ms=POLL_MS, max_records=size), f"reading {topic}")
                    for tp, messages in fetched.items():
                        end = ends[tp.partition]
                        held[tp.partition] += [  # _record's, inline: a replay reads millions
                            _new_record(
                                LogRecord,
                                (m.topic, m.partition, m.offset, (m.key or b"").decode(), m.value or b"", tuple(m.headers)),
                            )
                            for m in messages
                            if m.offset < end
                        ]
                        if messages and messages[-1].offset + 1 >= end:
                            left.discard(tp.partition)
                            reader.pause(tp)
                for partition in sorted(held):
                    records = held[partition]
                    while len(records) >= size or (records and partition not in left):
                        chunk, records = records[:size], records[size:]
                        held[partition] = records
                        yield partition, chunk
        finally:
            await reader.stop()

    async def end_offsets(self, topic: str) -> dict[int, int]:
        async def ends() -> dict[int, int]:
            _, reader = await self._connected()
            tps = [TopicPartition(topic, p) for p in range(self.topics.partitions(topic))]
            async with self._reading:
                found = await reader.end_offsets(tps)
            return {tp.partition: int(offset) for tp, offset in found.items()}

        return await self._guard(ends(), f"asking the end offsets of {topic}")

    async def ping(self) -> None:
        async def metadata() -> None:
            producer, _ = await self._connected()
            await producer.client.fetch_all_metadata()

        await self._guard(metadata(), "asking Kafka for metadata")

    # Internals ------------------------------------------------------------------

    async def _guard(self, work: Awaitable[T], what: str) -> T:
        """Every Kafka failure, and every wait longer than produce_timeout, is LogUnavailable."""
        try:
            async with asyncio.timeout(self.produce_timeout):  # no task of its own per call, unlike wait_for
                return await work
        except LogUnavailable:
            raise
        except TimeoutError as slow:
            raise LogUnavailable(f"Kafka did not answer within {self.produce_timeout}s while {what}") from slow
        except (KafkaError, OSError) as failure:
            raise LogUnavailable(f"Kafka failed while {what}: {failure!r}") from failure

    async def _connected(self) -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
        if self._producer is not None and self._reader is not None:
            return self._producer, self._reader
        async with self._connecting:
            if self._closed:
                raise LogUnavailable("the Kafka log is closed")
            if self._producer is None or self._reader is None:
                try:
                    await self._connect()
                except BaseException:
                    # Clients that failed to start cannot be restarted: drop them, build new ones next time.
                    await self._disconnect()
                    raise
            assert self._producer is not None and self._reader is not None
            return self._producer, self._reader

    async def _connect(self) -> None:
        await self._ensure_topics()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=True,  # broker-side retries never duplicate or reorder a partition
            linger_ms=self.linger_ms,
            max_batch_size=MAX_BATCH_BYTES,
            request_timeout_ms=int(self.produce_timeout * 1000),
        )
        await self._producer.start()
        self._pipe = ProducePipe(
            self._producer.client, timeout=self.produce_timeout, max_batch_bytes=MAX_BATCH_BYTES, client_id="omni-log"
        )
        self._reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=None,  # positional reads: no group, no committed offsets
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Kafka answers one request per connection at a time, so a long-polling fetch would hold
            # up the next end_offsets by its whole wait; keep the wait short (and pause when idle).
            fetch_max_wait_ms=FETCH_WAIT_MS,
            request_timeout_ms=max(int(self.produce_timeout * 1000), 5000),
            # A read assigns its one partition, and assign() also tells the client to keep metadata
            # for that topic only: the next read of another topic finds it unknown and waits out
            # this backoff before asking again (aiokafka's 100 ms default: about 0.3 s a runner step).
            retry_backoff_ms=READER_RETRY_BACKOFF_MS,
        )
        await self._reader.start()
        await self._check_partitions(self._producer)
        log.info("connected to Kafka at %s", self.bootstrap_servers)

    async def _reset(self, failed: AIOKafkaProducer) -> None:
        """Replace `failed`, unless it was replaced already: appends that were still using it when
        it was closed fail too, and must not close its successor (other appends' producer) in turn."""
        async with self._connecting:
            if self._producer is not failed:
                return
            try:
                await asyncio.wait_for(self._disconnect(), timeout=self.produce_timeout)
            except TimeoutError:
                log.warning("Kafka clients did not stop within %ss; dropped", self.produce_timeout)
                self._producer = self._reader = None

    async def _disconnect(self) -> None:
        producer, reader, pipe = self._producer, self._reader, self._pipe
        self._producer = self._reader = self._pipe = None
        if pipe is not None:
            await pipe.close()
        for client in (producer, reader):
            if client is not None:
                try:
                    await client.stop()
                except Exception:  # stopping a half-started client can fail; nothing to keep
                    log.debug("stopping a Kafka client failed", exc_info=True)

    async def _ensure_topics(self) -> None:
        """Create our topics when missing. Creating is idempotent; an existing topic is kept as is."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=int(self.produce_timeout * 1000))
        try:
            await admin.start()
            wanted = [NewTopic(t, self.topics.partitions(t), 1, topic_configs=dict(TOPIC_CONFIGS)) for t in self.topics.all()]
            response = await admin.create_topics(wanted)
            for entry in response.topic_errors:
                name, code = entry[0], entry[1]
                error = for_code(code)
                if code != 0 and error is not TopicAlreadyExistsError:
                    raise error(f"creating topic {name}: {entry[2] if len(entry) > 2 else ''}")
        finally:
            await admin.close()

    async def _check_partitions(self, producer: AIOKafkaProducer) -> None:
        """A topic made elsewhere with another partition count would misplace tenants: refuse it."""
        for topic in self.topics.all():
            found = await producer.partitions_for(topic)
            if len(found) != self.topics.partitions(topic):
                raise LogUnavailable(
                    f"topic {topic} has {len(found)} partitions but {self.topics.partitions(topic)} are configured"
                )

    async def _read(self, tp: TopicPartition, start: int, limit: int) -> list[LogRecord]:
        _, reader = await self._connected()
        async with self._reading:
            end = (await reader.end_offsets([tp]))[tp]
            if start >= end:
                return []  # the end of the partition: answer at once, no fetch wait
            if reader.assignment() != {tp}:
                reader.assign([tp])
            reader.seek(tp, start)
            reader.resume(tp)
            try:
                return await _fetch_some(reader, tp, start, limit)
            finally:
                # No background prefetching between reads: it would only be thrown away by the next seek.
                reader.pause(tp)


async def _send_as_batches(
    producer: AIOKafkaProducer, topic: str, partition: int, items: Sequence[Outgoing]
) -> list[asyncio.Future[object]]:
    acks = []
    batch = producer.create_batch()
    for item in items:
        # A full batch refuses the record (and closes); an empty one takes any record.
        # aiokafka's record builder (Cython) takes the headers as a list only.
        while batch.append(key=item.key.encode(), value=item.value, timestamp=None, headers=list(item.headers)) is None:
            acks.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
    batch.close()
    acks.append(await producer.send_batch(batch, topic, partition=partition))
    return acks


async def _fetch_some(reader: AIOKafkaConsumer, tp: TopicPartition, start: int, limit: int) -> list[LogRecord]:
    # Records exist at `start` (it is below the end), so an empty answer only means "not fetched
    # yet": keep asking (bounded by _guard's timeout). Returning [] would tell the caller that the
    # partition ended, and a meter's catch-up would then skip history.
    while True:
        batch = (await reader.getmany(tp, timeout_ms=POLL_MS, max_records=limit)).get(tp, [])
        records = [_record(m.topic, m.partition, m.offset, m.key, m.value, m.headers) for m in batch if m.offset >= start]
        if records:
            return records


def _record(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> LogRecord:
    return _new_record(LogRecord, (topic, partition, offset, (key or b"").decode(), value or b"", tuple(headers)))


_new_record = tuple.__new__  # what LogRecord(...) calls, without the named tuple's own Python frame
