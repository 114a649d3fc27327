"""Runs: each partition's fetched records reach a Faust agent as one event.

Faust hands an agent one event per record. Each costs about 30 µs of Python on
the worker's event loop (a message, an event, flow control, a queue hop, sensors,
an ack): at most about 33,000 records/s per core before any folding, and the
largest single cost of Kafka mode. Our agents fold batches and never look at a
record alone, so the worker's consumer (streams.faust_consumer.BatchConsumer)
delivers *runs*: one Faust message per partition per fetch, whose value is that
partition's fetched records, in offset order.

A run's message carries the offset of its last record. Faust's read offsets,
its gap tracking, acks and group commits therefore treat a run as its last
record, and the offsets before it as a gap that is committed with it. Exactness
never depended on those commits: every assignment seeks to the views'
checkpoints, and the projectors skip whatever the views already hold.

The log itself is unchanged: one Kafka record per event, as the API appends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, cast

import faust
from faust.types import TP, AppT, Message
from faust.types.tuples import ConsumerMessage

from streams.log import LogRecord

_new_record = tuple.__new__  # what LogRecord(...) calls


class FetchedRecord(Protocol):
    """What Faust's aiokafka driver fetches (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    serialized_value_size: int


def run_message(tp: TP, records: Sequence[FetchedRecord], generation_id: int | None) -> ConsumerMessage:
    """One Faust message for a partition's run of records (at least one), at the last record's offset."""
    last = records[-1]
    return ConsumerMessage(
        tp.topic,
        tp.partition,
        last.offset,
        last.timestamp / 1000.0,
        last.timestamp_type,
        None,  # headers: each record of the run keeps its own
        None,
        cast(Any, records),  # Faust types a value as bytes; RunSchema passes the run through
        None,
        0,
        sum(record.serialized_value_size for record in records),
        tp,
        generation_id=generation_id,
    )


class RunSchema(faust.Schema):
    """The schema of a topic delivered in runs: the event's value is the run, as fetched."""

    def loads_key(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        return None

    def loads_value(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        return message.value


def log_records(runs: Iterable[Sequence[FetchedRecord]]) -> dict[int, list[LogRecord]]:
    """Runs -> LogRecords per partition, in offset order, each offset once.

    Runs of one partition arrive in fetch order; after a rebalance's seek a run may
    repeat offsets an earlier one carried, and the first copy is kept.
    """
    by_partition: dict[int, dict[int, LogRecord]] = {}
    for run in runs:
        for record in run:
            records = by_partition.setdefault(record.partition, {})
            if record.offset not in records:
                key = record.key.decode() if record.key else ""
                records[record.offset] = _new_record(  # LogRecord(...), without its Python frame
                    LogRecord, (record.topic, record.partition, record.offset, key, record.value or b"", tuple(record.headers))
                )
    return {partition: [records[o] for o in sorted(records)] for partition, records in by_partition.items()}


class RunBuffer:
    """Runs between an agent and its fold, bounded by records rather than runs.

    Runs are as long as a fetch happened to be: a few records when events trickle
    in, thousands when the worker catches up. The fold takes a batch: every run
    buffered, up to `batch` records, once there is a batch or the oldest run has
    lingered `linger` seconds. Every fold transaction has a fixed cost (checkpoints,
    meter definitions, a commit), so a trickle is folded a few times a second
    rather than once per fetch; a backlog is folded at once, in full batches.
    """

    def __init__(self, max_records: int, *, linger: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_records = max_records
        self.linger = linger
        self.clock = clock
        self._runs: list[Sequence[FetchedRecord]] = []
        self._records = 0
        self._oldest = 0.0  # when the oldest buffered run arrived
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        """Records buffered."""
        return self._records

    async def put(self, run: Sequence[FetchedRecord]) -> None:
        """Add a run once the buffer is below its bound (a single run may exceed it)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._records < self.max_records)
            if not self._runs:
                self._oldest = self.clock()
            self._runs.append(run)
            self._records += len(run)
            self._changed.notify_all()

    async def take(self, batch: int) -> list[Sequence[FetchedRecord]]:
        """The oldest runs, at least one, then more while they fit in `batch` records."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._runs))
            wait = self._oldest + self.linger - self.clock()
            if wait > 0 and self._records < batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait_for(lambda: self._records >= batch)
            taken, size = [self._runs[0]], len(self._runs[0])
            while len(taken) < len(self._runs) and size + len(self._runs[len(taken)]) <= batch:
                size += len(self._runs[len(taken)])
                taken.append(self._runs[len(taken)])
            del self._runs[: len(taken)]  # any left are older than a linger: the next take waits no more
            self._records -= size
            self._changed.notify_all()
            return taken
