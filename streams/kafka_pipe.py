"""Small appends to Kafka through produce requests written here, on a connection per broker of their own.

A consume appends one record and waits for it. Through aiokafka's producer that cost 196 to 240 µs
of the API's CPU per produce request (the accumulator, the sender's task and `asyncio.wait` per
round, the request encoded and the response decoded by its generic protocol classes, a `wait_for`
per request), against about 50 to 70 µs for the same request encoded with `struct`, its record
batch built by aiokafka's C builder, and its response read from `data_received`. At an offered
rate a produce request carries one or two consumes, so that was about a quarter of a consume's CPU.

What it keeps from the idempotent producer: every batch carries this pipe's producer id, epoch and
the partition's next sequence number, so the broker appends batches in the order sent, each at most
once under that producer id. One request per broker connection is in flight at a time, as in
aiokafka (and Kafka handles one request per connection at a time anyway): appends that arrive
meanwhile wait and leave together, one batch per partition, in the order they came; appends made
in one turn of the event loop leave in one request.

Failures, per partition of a response:
- a retriable error (no such partition yet, no leader or not the leader, not enough replicas, the
  request timed out on the broker): the same batch goes again unchanged, under its producer id and
  sequence, first in the queue, after a pause of RETRY_PAUSE (and the metadata looked up again
  where it says so), until the deadline of its appends: a leader that had appended it drops the
  copy, as for Kafka's own idempotent producer;
- the broker does not accept the sequence or producer id (it lost or never had its state):
  nothing was written, and the appends go again in a new batch under a new producer id;
- any other error: those appends fail with LogUnavailable (nothing was written for them), and the
  next request starts a new producer id, so no sequence number is left out.
A connection lost, or a response later than the timeout: every append in flight on it fails with
LogUnavailable (they may or may not have been written, as with any client's timeout). A broker
that cannot be reached fails the appends waiting for it at once.

The record format is the one aiokafka writes (record batches v2, uncompressed, the create time of
the append), so consumers see no difference. Plaintext connections only, as `KafkaLog` configures.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.transaction import InitProducerIdRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.log import LogUnavailable
from streams.sockets import connected

log = logging.getLogger(__name__)

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers (a list: the C builder takes no tuple)

API_PRODUCE, API_VERSIONS = 0, 18
# Produce versions this module reads and writes: 3 (record batches v2, the first Kafka 4 accepts)
# to 8; from 9 on the request and response are "flexible" (compact encodings, tagged fields).
PRODUCE_VERSIONS = range(3, 9)
# Retriable errors: the same batch goes again, unchanged (the same producer id, epoch and sequence,
# as Kafka's Java client sends it), so a leader that had appended it before answering (a leadership
# moved while acks=all waited, a replication too slow) drops the copy instead of writing it twice:
# UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT,
# NOT_ENOUGH_REPLICAS, NOT_ENOUGH_REPLICAS_AFTER_APPEND.
SEND_SAME = frozenset({3, 5, 6, 7, 19, 20})
# The broker does not accept this producer's sequence (it lost or never had its state): nothing was
# written, and the records go again in a new batch under a new producer id: OUT_OF_ORDER_SEQUENCE_NUMBER,
# INVALID_PRODUCER_EPOCH, UNKNOWN_PRODUCER_ID.
NEW_PRODUCER = frozenset({45, 47, 59})
DUPLICATE_SEQUENCE_NUMBER = 46  # the broker had the batch already: written
METADATA_ERRORS = frozenset({3, 5, 6})  # the partition's leader is looked up again
RETRY_PAUSE = 0.05  # before anything is sent again after a refusal
NO_TRANSACTIONAL_ID = struct.pack(">h", -1)
_HEADER = struct.Struct(">ihhih")  # size, api key, api version, correlation id, client id length
_INT16, _INT32 = struct.Struct(">h"), struct.Struct(">i")
_PARTITION_HEAD = struct.Struct(">ihq")  # partition, error code, base offset
_PARTITION = struct.Struct(">ii")  # partition, length of its records
_ACKS_TIMEOUT_TOPICS = struct.Struct(">hii")


@dataclass(eq=False, slots=True)
class _SendSame:
    """A batch to send again exactly as it went: its appends, in order, under its producer and sequence."""

    producer: tuple[int, int]
    sequence: int
    deadline: float  # the latest of its appends'


@dataclass(slots=True)
class _Append:
    topic: str
    partition: int
    records: Sequence[Record]
    future: asyncio.Future[None]
    deadline: float
    size: int  # estimated bytes in a batch
    sent: bool = False
    again: _SendSame | None = None  # set while it waits to go again in the same batch


@dataclass(slots=True)
class _Batch:
    appends: list[_Append]
    producer: tuple[int, int]  # the producer id and epoch it carries
    sequence: int  # its base sequence


@dataclass(slots=True)
class _Request:
    correlation_id: int
    written_at: float
    batches: dict[tuple[str, int], _Batch]


class _Link(asyncio.Protocol):
    """One broker connection: responses framed from `data_received`, each answering the oldest
    request in flight (the ApiVersions exchange while connecting, then the pipe's produce requests)."""

    def __init__(self, node: int) -> None:
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_flight: deque[_Request] = deque()
        self.versions: asyncio.Future[bytes] | None = None
        self.pipe: ProducePipe | None = None  # set once the connection is ready for produce requests
        self.produce_version = 3
        self.lost: LogUnavailable | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = connected(transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 4 and self.lost is None:
            (size,) = _INT32.unpack_from(buffer, 0)
            if len(buffer) < 4 + size:
                return
            frame = bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]
            if self.versions is not None and not self.versions.done():
                self.versions.set_result(frame)
            elif self.pipe is not None:
                self.pipe._answered(self, frame)
            else:
                self.fail(LogUnavailable("Kafka sent a response no request asked for"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(LogUnavailable(f"the connection to Kafka broker {self.node} was lost: {exc or 'closed by the broker'}"))

    def fail(self, failure: LogUnavailable) -> None:
        """Drop the connection, failing every append in flight on it with `failure`."""
        if self.lost is not None:
            return
        self.lost = failure
        if self.versions is not None and not self.versions.done():
            self.versions.set_exception(failure)
        for request in self.in_flight:
            for batch in request.batches.values():
                for append in batch.appends:
                    if not append.future.done():
                        append.future.set_exception(failure)
        self.in_flight.clear()
        if self.transport is not None:
            self.transport.abort()
        if self.pipe is not None:
            self.pipe._dropped(self)


class ProducePipe:
    """Idempotent appends of a few records each, for `KafkaLog`; metadata and producer ids come
    through `client` (its producer's client), records go over connections of the pipe's own."""

    def __init__(
        self, client: AIOKafkaClient, *, timeout: float = 10.0, max_batch_bytes: int = 128 * 1024, client_id: str = "omni-pipe"
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._max_batch_bytes = max_batch_bytes
        self._client_id = client_id.encode()
        self._timeout_ms = int(timeout * 1000)
        self._queue: deque[_Append] = deque()
        self._links: dict[int, _Link] = {}
        self._leaders: dict[tuple[str, int], int] = {}  # from the client's metadata, until an error says otherwise
        self._connecting: dict[int, asyncio.Task[None]] = {}
        self._producer: tuple[int, int] | None = None
        self._producer_task: asyncio.Task[None] | None = None
        self._sequences: dict[tuple[str, int], int] = {}
        self._correlation = 0
        self._watch: asyncio.TimerHandle | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._flush_soon = False  # a flush is due (at the end of this turn of the loop, or after a pause)
        self._resume_at = 0.0  # time.monotonic() before which nothing is sent (just after a refusal)
        self._closed = False

    # -- the port -----------------------------------------------------------------------------------

    def send(self, topic: str, partition: int, records: Sequence[Record]) -> asyncio.Future[None]:
        """Append `records` to the partition, in order, in one batch; the future is done once the
        broker acknowledged them (acks=all), or fails with LogUnavailable."""
        return self.send_many([(topic, partition, records)])[0]

    def send_many(self, batches: Sequence[tuple[str, int, Sequence[Record]]]) -> list[asyncio.Future[None]]:
        """`send` for several partitions at once: they leave in the same request to each broker."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        flush = False
        deadline = time.monotonic() + self._timeout
        # Sized (and so type-checked by the C builder) before any is queued: all or none.
        sizes = [
            sum(DefaultRecordBatchBuilder.estimate_size_in_bytes(k, v, h) for k, v, h in records) for _, _, records in batches
        ]
        for (topic, partition, records), size in zip(batches, sizes, strict=True):
            future: asyncio.Future[None] = loop.create_future()
            futures.append(future)
            if self._closed:
                future.set_exception(LogUnavailable("the Kafka log is closed"))
                continue
            self._queue.append(_Append(topic, partition, records, future, deadline, size))
            flush = flush or self._ready_for(self._leaders.get((topic, partition)))
        if flush:
            # At the end of this turn of the loop, not now: appends made in the same turn (the
            # consumes a group call decided together) leave in one request, as aiokafka's sender
            # task gathers them. Written at once, the first went alone and the rest waited a round
            # trip for it: twice the requests (quota_consume, closed loop: the broker's CPU per
            # consume 1.68x, the API's 1.16x).
            if not self._flush_soon:
                self._flush_soon = True
                loop.call_soon(self._flush)
        else:  # it leaves when what it waits for is done: a response, a connection, a producer id
            self._watch_while_busy()
        return futures

    def _ready_for(self, node: int | None) -> bool:
        """Whether a flush now could send to `node`, or start what it waits for; otherwise the
        event it waits for flushes (without a scan of the queue per append)."""
        if node is None:
            return True  # its leader is looked up in the flush
        if self._producer is None:
            return self._producer_task is None
        link = self._links.get(node)
        if link is None:
            return node not in self._connecting
        return not link.in_flight and not self._flush_soon

    async def close(self) -> None:
        self._closed = True
        for task in (*self._connecting.values(), self._producer_task, self._refreshing):
            if task is not None:
                task.cancel()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        closed = LogUnavailable("the Kafka log is closed")
        for link in list(self._links.values()):
            link.fail(closed)
        self._links.clear()
        self._fail_waiting(closed)

    # -- sending ------------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write a request to every broker that has none in flight and appends waiting for it."""
        self._flush_soon = False
        if self._closed or not self._queue:
            return
        now = time.monotonic()
        if now < self._resume_at:  # a refusal just came back: give the broker a moment
            if not self._flush_soon:
                self._flush_soon = True
                asyncio.get_running_loop().call_at(asyncio.get_running_loop().time() + self._resume_at - now, self._flush)
            return
        waiting: list[_Append] = []
        for append in self._queue:
            again = append.again
            if again is not None:  # a batch that goes again goes whole (its callers may have gone), or not at all
                if now > again.deadline:
                    if not append.future.done():
                        append.future.set_exception(LogUnavailable(f"Kafka did not take the append within {self._timeout}s"))
                    continue
            elif append.future.done():  # its caller gave up before it was sent: it never takes a sequence number
                continue
            elif now > append.deadline:
                append.future.set_exception(LogUnavailable(f"Kafka did not take the append within {self._timeout}s"))
                continue
            waiting.append(append)
        if self._producer is None:
            self._queue = deque(waiting)
            if waiting and self._producer_task is None:
                self._producer_task = asyncio.create_task(self._new_producer(), name="kafka-pipe-producer-id")
            self._watch_while_busy()
            return
        ready: dict[int, list[_Append]] = {}
        for append in waiting:
            node = self._leader(append.topic, append.partition)
            if node is None:
                self._refresh_metadata()
                continue
            link = self._links.get(node)
            if link is None:
                self._connect(node)
            elif not link.in_flight:
                ready.setdefault(node, []).append(append)
        for node, appends in ready.items():
            self._write(self._links[node], appends)
        self._queue = deque(a for a in waiting if not a.sent)
        self._watch_while_busy()

    def _leader(self, topic: str, partition: int) -> int | None:
        node = self._leaders.get((topic, partition))
        if node is None:
            found = self._client.cluster.leader_for_partition(TopicPartition(topic, partition))
            if found is None or found < 0:
                return None
            node = self._leaders[(topic, partition)] = found
        return node

    def _write(self, link: _Link, appends: list[_Append]) -> None:
        """One produce request with as many of `appends` as fit, one batch per partition, in order."""
        assert self._producer is not None and link.transport is not None
        producer_id, epoch = self._producer
        chosen: dict[tuple[str, int], list[_Append]] = {}
        same: dict[tuple[str, int], _SendSame] = {}  # partitions whose batch goes again as it went
        sizes: dict[tuple[str, int], int] = {}
        full: set[tuple[str, int]] = set()
        for append in appends:
            tp = (append.topic, append.partition)
            if tp in full:
                continue  # the next request takes it, and every later append to this partition
            if append.again is not None:
                if tp in chosen and same.get(tp) is not append.again:
                    full.add(tp)  # a batch going again goes alone, as it went
                    continue
                same[tp] = append.again
            elif tp in same:
                full.add(tp)
                continue
            else:
                used = sizes.get(tp, 0)
                if used and used + append.size > self._max_batch_bytes:
                    full.add(tp)
                    continue
                sizes[tp] = used + append.size
            chosen.setdefault(tp, []).append(append)
            append.sent = True
        batches: dict[tuple[str, int], _Batch] = {}
        by_topic: dict[str, list[bytes]] = {}
        for (topic, partition), group in chosen.items():
            again = same.get((topic, partition))
            if again is not None:
                (batch_producer, batch_epoch), sequence = again.producer, again.sequence
            else:
                batch_producer, batch_epoch, sequence = producer_id, epoch, self._sequences.get((topic, partition), 0)
            builder = DefaultRecordBatchBuilder(2, 0, 0, batch_producer, batch_epoch, sequence, 1 << 30)
            offset = 0
            for append in group:
                for key, value, headers in append.records:
                    builder.append(offset, None, key, value, headers)
                    offset += 1
            if again is None:
                self._sequences[(topic, partition)] = (sequence + offset) & 0x7FFFFFFF  # Kafka's sequences wrap at 2^31
            batches[(topic, partition)] = _Batch(group, (batch_producer, batch_epoch), sequence)
            batch = builder.build()
            by_topic.setdefault(topic, []).append(_PARTITION.pack(partition, len(batch)) + batch)
        body = [NO_TRANSACTIONAL_ID, _ACKS_TIMEOUT_TOPICS.pack(-1, self._timeout_ms, len(by_topic))]
        for topic, partitions in by_topic.items():
            name = topic.encode()
            body += [_INT16.pack(len(name)), name, _INT32.pack(len(partitions)), *partitions]
        correlation_id = self._next_correlation()
        link.in_flight.append(_Request(correlation_id, time.monotonic(), batches))
        link.transport.write(self._framed(API_PRODUCE, link.produce_version, correlation_id, b"".join(body)))

    def _next_correlation(self) -> int:
        self._correlation = (self._correlation + 1) & 0x7FFFFFFF
        return self._correlation

    def _framed(self, api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
        """A request as Kafka reads it: its size, header v1 (this pipe's client id), then its body."""
        head = _HEADER.pack(
            _HEADER.size - 4 + len(self._client_id) + len(body), api_key, version, correlation_id, len(self._client_id)
        )
        return head + self._client_id + body

    # -- responses ----------------------------------------------------------------------------------

    def _answered(self, link: _Link, frame: bytes) -> None:
        if not link.in_flight:
            link.fail(LogUnavailable("Kafka sent a response no request asked for"))
            return
        request = link.in_flight[0]
        try:
            errors = _produce_errors(frame, request.correlation_id, link.produce_version)
        except (struct.error, ValueError, UnicodeDecodeError) as bad:
            link.fail(LogUnavailable(f"Kafka's produce response could not be read: {bad}"))
            return
        link.in_flight.popleft()
        again: list[_Append] = []
        for tp, batch in request.batches.items():
            code = errors.get(tp)
            if code == 0 or code == DUPLICATE_SEQUENCE_NUMBER:
                for append in batch.appends:
                    if not append.future.done():
                        append.future.set_result(None)
                continue
            if code in METADATA_ERRORS:
                self._leaders.pop(tp, None)
                self._refresh_metadata()
            if code in SEND_SAME:
                log.info("Kafka answered error %d for a batch of %s[%d]; it goes again as it was", code, tp[0], tp[1])
                same = _SendSame(batch.producer, batch.sequence, max(a.deadline for a in batch.appends))
                for append in batch.appends:
                    append.again, append.sent = same, False
                again += batch.appends
                continue
            if self._producer == batch.producer:  # this partition's sequences from this batch on are void: start over
                self._producer = None
                self._sequences.clear()
            if code in NEW_PRODUCER:
                log.info("Kafka did not take the sequence of a batch of %s[%d] (error %d); it goes again", tp[0], tp[1], code)
                for append in batch.appends:
                    append.again, append.sent = None, False
                again += [a for a in batch.appends if not a.future.done()]
                continue
            failure = LogUnavailable(f"Kafka refused the append to {tp[0]}[{tp[1]}] (error {code})")
            for append in batch.appends:
                if not append.future.done():
                    append.future.set_exception(failure)
        if again:
            self._queue.extendleft(reversed(again))  # ahead of the appends that came after them
            self._resume_at = time.monotonic() + RETRY_PAUSE
        self._flush()

    def _check_responses(self) -> None:
        """One timer for the pipe: a response later than the timeout drops its connection, and an
        append still waiting to be sent past its deadline fails (its broker or leader unknown)."""
        self._watch = None
        now = time.monotonic()
        for link in list(self._links.values()):
            if link.in_flight and now - link.in_flight[0].written_at > self._timeout:
                link.fail(LogUnavailable(f"Kafka broker {link.node} did not answer within {self._timeout}s"))
        if any(now > append.deadline for append in self._queue):
            self._flush()
        self._watch_while_busy()

    def _watch_while_busy(self) -> None:
        if self._watch is None and not self._closed and (self._queue or any(link.in_flight for link in self._links.values())):
            self._watch = asyncio.get_running_loop().call_later(self._timeout / 4, self._check_responses)

    def _dropped(self, link: _Link) -> None:
        """A connection is gone. What was in flight on it may or may not have been written, so the
        next request starts a new producer id rather than guess the sequences."""
        if self._links.get(link.node) is link:
            del self._links[link.node]
        self._producer = None
        self._sequences.clear()
        self._leaders.clear()
        if not self._closed:
            asyncio.get_running_loop().call_soon(self._flush)

    # -- connections, producer ids, metadata ----------------------------------------------------------

    def _connect(self, node: int) -> None:
        if node not in self._connecting:
            self._connecting[node] = asyncio.create_task(self._open(node), name=f"kafka-pipe-connect-{node}")

    async def _open(self, node: int) -> None:
        link = _Link(node)
        try:
            broker = self._client.cluster.broker_metadata(node)
            if broker is None:
                raise LogUnavailable(f"Kafka broker {node} is not in the metadata")
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._timeout):
                    await loop.create_connection(lambda: link, broker.host, broker.port)
                    assert link.transport is not None
                    link.versions = loop.create_future()
                    correlation_id = self._next_correlation()
                    link.transport.write(self._framed(API_VERSIONS, 0, correlation_id, b""))
                    link.produce_version = _produce_version(await link.versions, correlation_id)
            except (OSError, TimeoutError, struct.error) as failure:
                raise LogUnavailable(
                    f"could not connect to Kafka broker {node} ({broker.host}:{broker.port}): {failure!r}"
                ) from failure
            if self._closed:
                raise LogUnavailable("the Kafka log is closed")
            if link.lost is not None:  # it failed while connecting (an unexpected frame, the broker gone)
                raise link.lost
            link.versions = None
            link.pipe = self
            self._links[node] = link
        except LogUnavailable as failure:
            link.fail(failure)
            self._fail_waiting(failure, node)
        except BaseException:  # cancelled by close()
            link.fail(LogUnavailable("the Kafka log is closed"))
            raise
        finally:
            self._connecting.pop(node, None)
        self._flush()

    async def _new_producer(self) -> None:
        """A producer id and epoch of the pipe's own: aiokafka's producer numbers its own batches."""
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    node = self._client.get_random_node()
                    if node is None:
                        await self._client.force_metadata_update()
                        node = self._client.get_random_node()
                    if node is None:
                        raise LogUnavailable("no Kafka broker is known")
                    response = await self._client.send(node, InitProducerIdRequest(None, 60_000))
            except LogUnavailable:
                raise
            except Exception as failure:  # OSError, TimeoutError, aiokafka's KafkaError
                raise LogUnavailable(f"could not get a producer id from Kafka: {failure!r}") from failure
            if response.error_code != 0:
                raise LogUnavailable(f"Kafka refused a producer id (error {response.error_code})")
            if not self._closed:
                self._producer = (response.producer_id, response.producer_epoch)
                self._sequences.clear()
        except LogUnavailable as failure:
            self._fail_waiting(failure)
        finally:
            self._producer_task = None
        self._flush()

    def _refresh_metadata(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh(), name="kafka-pipe-metadata")

    async def _refresh(self) -> None:
        await asyncio.sleep(RETRY_PAUSE)
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.force_metadata_update()
        except Exception:  # the appends waiting on it fail by their deadlines (_check_responses)
            log.debug("refreshing Kafka metadata failed", exc_info=True)
        self._leaders.clear()
        self._refreshing = None  # so a leader still unknown asks again
        self._flush()

    def _fail_waiting(self, failure: LogUnavailable, node: int | None = None) -> None:
        """Fail the appends not yet sent (only those led by `node`, if given)."""
        kept: deque[_Append] = deque()
        for append in self._queue:
            if node is not None and self._leaders.get((append.topic, append.partition)) != node:
                kept.append(append)
            elif not append.future.done():
                append.future.set_exception(failure)
        self._queue = kept


def _produce_version(frame: bytes, correlation_id: int) -> int:
    """The highest produce version both sides speak, from an ApiVersions v0 response."""
    (answered,) = _INT32.unpack_from(frame, 0)
    if answered != correlation_id:
        raise LogUnavailable("Kafka answered ApiVersions out of turn")
    (error,) = _INT16.unpack_from(frame, 4)
    if error != 0:
        raise LogUnavailable(f"Kafka refused ApiVersions (error {error})")
    (count,) = _INT32.unpack_from(frame, 6)
    for index in range(count):
        key, low, high = struct.unpack_from(">hhh", frame, 10 + 6 * index)
        if key == API_PRODUCE:
            usable = [v for v in PRODUCE_VERSIONS if low <= v <= high]
            if not usable:
                raise LogUnavailable(f"this Kafka speaks produce versions {low} to {high}, none of 3 to 8")
            return max(usable)
    raise LogUnavailable("this Kafka does not list the produce API")


def _produce_errors(frame: bytes, correlation_id: int, version: int) -> dict[tuple[str, int], int]:
    """Each (topic, partition)'s error code in a produce response (versions 3 to 8)."""
    (answered,) = _INT32.unpack_from(frame, 0)
    if answered != correlation_id:
        raise ValueError(f"correlation id {answered}, expected {correlation_id}")
    errors: dict[tuple[str, int], int] = {}
    position = 4
    (topics,) = _INT32.unpack_from(frame, position)
    position += 4
    for _ in range(topics):
        (length,) = _INT16.unpack_from(frame, position)
        topic = frame[position + 2 : position + 2 + length].decode()
        position += 2 + length
        (partitions,) = _INT32.unpack_from(frame, position)
        position += 4
        for _ in range(partitions):
            partition, error, _offset = _PARTITION_HEAD.unpack_from(frame, position)
            position += _PARTITION_HEAD.size + 8  # and the log append time
            if version >= 5:
                position += 8  # the log start offset
            if version >= 8:
                (record_errors,) = _INT32.unpack_from(frame, position)
                position += 4
                for _ in range(max(record_errors, 0)):
                    position += 4  # the batch index
                    (text,) = _INT16.unpack_from(frame, position)
                    position += 2 + max(text, 0)
                (text,) = _INT16.unpack_from(frame, position)
                position += 2 + max(text, 0)
            errors[(topic, partition)] = error
    return errors
