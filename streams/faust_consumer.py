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
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from faust.sensors import Monitor
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as KafkaConsumer
from faust.transport.drivers.aiokafka import Transport as KafkaTransport
from faust.types import TP, EventT, Message, StreamT
from mode.services import WaitResults

from omni import metrics
from streams.faust_runs import run_message

# How long the broker may hold a fetch that finds nothing new. Faust fixes 1,500 ms, and with one
# broker aiokafka sends no other fetch meanwhile: a fetch for a drained partition (say the control
# topic) then stalled the usage partitions, which had data waiting, for up to 1.5 s at a time.
FETCH_MAX_WAIT_MS = 20
# The longest a delivery waits for full agent queues to drain to their low-water mark; past it the
# delivery goes on and waits for room on its own (should a drop ever go unreported).
RELIEF_WAIT = 1.0


class BatchConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: KafkaTransport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by its fetcher, created on start
        return consumer


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
                yield tp, run_message(tp, records, generation)

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
        so the tree is rebuilt only when one does overlap (a re-delivery after a seek back),
        and then offsets already acked are cut out of it.
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
    """Faust's aiokafka transport with `consumer` as its consumer class."""

    class Transport(KafkaTransport):
        Consumer = consumer

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
