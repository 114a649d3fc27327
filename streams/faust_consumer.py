"""Faust's aiokafka consumer, tuned for agents that fold records in batches.

Faust's defaults suit agents that handle one record at a time and may block. Ours
take batches and hand them to a fold, so per-record overhead and idle waits are
what limit a worker. Each setting below was found with a py-spy profile of the
worker and is measured by `ops.bench.replay` (the `faust_noop` row):

- the broker holds an empty fetch for 20 ms, not Faust's 1.5 s;
- each partition's fetched records reach the agent as one event, a run (streams.faust_runs);
- full agent queues make the next delivery wait until they are drained, instead of pausing partitions;
- Faust's web monitor, which this worker does not serve, keeps no per-message statistics;
- uvloop runs the event loop.

It also waits for Kafka: Faust's producer and consumer crash the worker when the broker cannot
be reached as they start (`KafkaConnectionError: Unable to bootstrap`); here each retries with
backoff, one warning per attempt, until the broker answers (aiokafka itself rides out outages
once they run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiokafka.errors import KafkaError
from faust.exceptions import ConsumerNotStarted
from faust.sensors import Monitor
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as KafkaConsumer
from faust.transport.drivers.aiokafka import Producer as KafkaProducer
from faust.transport.drivers.aiokafka import Transport as KafkaTransport
from faust.transport.producer import Producer as FaustProducer
from faust.types import TP, EventT, Message, StreamT
from mode.services import WaitResults

from omni import metrics
from streams.faust_runs import run_message

# How long the broker may hold a fetch that finds nothing new. Faust fixes 1,500 ms, and with one
# broker aiokafka sends no other fetch meanwhile: a fetch for a drained partition (say the control
# topic) then stalled the usage partitions, which had data waiting, for up to 1.5 s at a time.
FETCH_MAX_WAIT_MS = 20
# And how much a fetch waits for (within that wait): with aiokafka's default, one byte, a steady
# stream of small records (consumes, api_calls) was fetched as soon as each few arrived, hundreds of
# fetches a second, each costing the broker and this worker's decoding; the fold lingers longer
# than the wait anyway (fold_linger_seconds).
FETCH_MIN_BYTES = 64 * 1024
# The longest a delivery waits for full agent queues to drain to their low-water mark; past it the
# delivery goes on and waits for room on its own (should a drop ever go unreported).
RELIEF_WAIT = 1.0
# Backoff between attempts to start a Kafka client while the broker does not answer.
START_RETRY_FIRST, START_RETRY_MAX = 0.5, 5.0
# What a client that cannot reach the broker raises as it starts.
UNREACHABLE = (KafkaError, OSError, TimeoutError)

logger = logging.getLogger(__name__)


class BatchConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: KafkaTransport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by its fetcher, created on start
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        return consumer

    async def on_start(self) -> None:
        """Faust's, but a consumer that cannot reach the broker is dropped and a new one tried
        (with backoff) until one starts, instead of crashing the worker."""
        delay = START_RETRY_FIRST
        while True:
            try:
                await super().on_start()
                return
            except UNREACHABLE as failure:
                consumer, self._consumer = self._consumer, None
                await _stop_quietly(consumer)
                if self.should_stop:
                    return
                logger.warning("Faust's consumer cannot reach Kafka (%r); retrying in %.1fs", failure, delay)
            await self.sleep(delay)  # returns early when the worker stops
            if self.should_stop:
                return
            delay = min(delay * 2, START_RETRY_MAX)


class PatientProducer(KafkaProducer):
    """Faust's aiokafka producer, started again (with backoff) until the broker answers."""

    async def on_start(self) -> None:
        await FaustProducer.on_start(self)  # the producer's buffer, as Faust's own on_start does first
        delay = START_RETRY_FIRST
        while not self.should_stop:
            producer = self._new_producer()
            try:
                await producer.start()
            except UNREACHABLE as failure:
                await _stop_quietly(producer)
                logger.warning("Faust's producer cannot reach Kafka (%r); retrying in %.1fs", failure, delay)
                await self.sleep(delay)  # returns early when the worker stops
                delay = min(delay * 2, START_RETRY_MAX)
                continue
            self._producer = producer
            self.beacon.add(producer)
            return


async def _stop_quietly(client: Any) -> None:
    """Stop a Kafka client that failed to start: it cannot be started again, and holds connections."""
    if client is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.stop(), timeout=5)


class BatchConsumer(KafkaConsumer):
    """Delivers runs straight through while the agents' queues have room, and waits while they are full.

    Faust tells the consumer when a queue passes its high-water mark (80 %) and when
    it is back under its low-water mark (40 %). Faust pauses the partition in between,
    and once every partition is paused its fetch loop sleeps a whole second. Here the
    next delivery waits instead, once, until the queues are drained to the low mark,
    so a worker that folds slower than it fetches does not pay for a wait per record.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pressed: set[TP] = set()
        self._relieved = asyncio.Event()
        self._relieved.set()

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def assignment(self) -> set[TP]:
        """No partitions while the consumer thread still waits for Kafka (BatchConsumerThread.on_start).

        Faust starts the consumer's own timers (its commit livelock detector asks for the
        assignment) before the thread that owns the Kafka consumer: Faust's raised
        ConsumerNotStarted there, and that crashed a worker whose broker was late.
        """
        try:
            return set(super().assignment())
        except ConsumerNotStarted:
            return set()

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Each partition's fetched records as one message (streams.faust_runs), not one per record.

        Otherwise as Faust's own: only partitions still active, and nothing more once the
        flow stops or the consumer generation changes (a rebalance began).
        """
        fetched, active = await self._wait_next_records(timeout)
        if fetched is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()  # as Faust does: back to the committed offsets
            except Exception as failed:
                self.log.warning("could not seek to the committed offsets while the flow is stopped: %r", failed)
            return
        generation = self.app.consumer_generation_id
        for tp, records in fetched.items():
            if not self.flow_active or self.app.consumer_generation_id != generation:
                break
            if records and (active is None or tp in active or tp in self._buffered_partitions):
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                await self._gap_within_run(tp, records[0].offset, records[-1].offset)
                yield tp, run_message(tp, records, generation)

    async def _gap_within_run(self, tp: TP, first: int, last: int) -> None:
        """The run's offsets before its last, as a gap, where Faust's fetch loop records none.

        Faust adds the gap up to a message only when its read offset for the partition is
        truthy: never for the first run after a seek to offset 0. That run's earlier offsets
        were then neither acked nor a gap, and were committed only because nothing had been
        committed before. When an older run's ack had landed first (a run fetched before a
        second seek to 0, as a worker's start does one from the assignment and one from
        Faust), the group's commit stopped at that ack and never moved again: the lag Kafka's
        tools show grew for ever, though the views were exact. Called as the run is handed
        to Faust's loop, which sets the read offset only after delivering it.
        """
        if last > first and not self._read_offset.get(tp):
            await self._add_gap(tp, first, last)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Record the offsets before a run's last one as done: the agents never see them.

        Faust's fetch loop calls this with `offset_to` the offset of the message it is about to
        deliver, and Faust's own version counts that offset as a gap too. The message is acked
        as well, so it is then listed twice, and `_new_offset` stops at the first repeat: with
        a gap before every message, as runs leave, each commit advanced by one run, and the
        list of acked offsets grew by every record in between, without end. Here the gap ends
        before `offset_to`.

        Faust also rebuilt the whole interval tree on every gap (`merge_overlaps`), a cost
        growing with the gaps held until the next commit. Runs' gaps only touch, never overlap,
        so the tree is rebuilt only when one does overlap (a re-delivery after a seek back).
        Offsets acked already (a run re-delivered after a seek back) are cut out of the gap.
        """
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed + 1)
        if offset_from < offset_to:
            gaps = self._gap[tp]
            overlapping = gaps.overlaps(offset_from, offset_to)
            gaps.addi(offset_from, offset_to)  # interval ends are exclusive: offset_to is not a gap
            if overlapping:
                gaps.merge_overlaps()
            acks = self._acked[tp]
            if overlapping or (acks and acks[-1] >= offset_from):  # acks come in order: the last is the highest
                for acked in [o for o in self._acked_index[tp] if offset_from <= o < offset_to]:
                    gaps.chop(acked, acked + 1)  # listed as acked already: never twice

    def on_buffer_full(self, tp: TP) -> None:
        self._pressed.add(tp)
        self._relieved.clear()

    def on_buffer_drop(self, tp: TP) -> None:
        self._pressed.discard(tp)
        if not self._pressed:
            self._relieved.set()

    def stop_flow(self) -> None:
        super().stop_flow()
        # A rebalance: Faust clears the agents' queues next, and a cleared queue reports no drop.
        self._pressed.clear()
        self._relieved.set()

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if _is_delivery(coros, timeout) and not self._relieved.is_set():
            delivery, suspended = coros
            metrics.DELIVERIES_HELD.inc()
            drained = await super().wait_first(self._relieved.wait(), suspended, timeout=RELIEF_WAIT)
            if self.should_stop or self.crashed or self.suspend_flow.is_set():
                delivery.close()  # abandoned, as Faust abandons a delivery when the flow stops
                return drained
            if not self._relieved.is_set():
                # No drop reported in all that time: stop waiting for one.
                self._pressed.clear()
                self._relieved.set()
            coros = (delivery, self.suspend_flow.wait())
        return await super().wait_first(*coros, timeout=timeout)


def _is_delivery(coros: tuple[Any, ...], timeout: object) -> bool:
    """The fetch loop's call: `wait_first(deliver(message), suspend_flow.wait())`, no timeout."""
    return timeout is None and len(coros) == 2 and all(asyncio.iscoroutine(c) for c in coros)


# Runs (streams.faust_runs) Faust may buffer per agent, each at most a batch of records: a bound on
# the worker's memory while its fold is behind.
STREAM_BUFFER_RUNS = 16


def delivery_settings(batch_size: int) -> dict[str, Any]:
    """The faust.App settings that go with BatchConsumer: runs of at most `batch_size` records."""
    return {
        "monitor": QuietMonitor(),
        "stream_buffer_maxsize": STREAM_BUFFER_RUNS,
        "broker_max_poll_records": batch_size,
    }


def transport_with(consumer: type[KafkaConsumer]) -> type[KafkaTransport]:
    """Faust's aiokafka transport with `consumer` as its consumer class, and a producer that waits for Kafka."""

    class Transport(KafkaTransport):
        Consumer = consumer
        Producer = PatientProducer

    return Transport


class QuietMonitor(Monitor):
    """Faust's monitor without its per-message bookkeeping (about 8% of Faust's delivery of single records).

    The monitor keeps statistics for Faust's web pages, which the worker does not
    serve; its own figures are the Prometheus metrics of the projectors.
    """

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        return None

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT, event: EventT) -> dict | None:
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: StreamT, event: EventT, state: dict | None = None) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        return None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it exists (Faust hands each record through several futures; uvloop makes
    that about 20% cheaper), else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
