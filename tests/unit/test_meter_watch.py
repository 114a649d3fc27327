"""The parts of live meter watches that need no server: the events' wire format, and the pulse that
reads where the views stand only while watched and wakes the watches of a partition that moved."""

from __future__ import annotations

import asyncio

import anyio

from api.meter_watch import ViewsPulse, answer_id, sse
from stores.database import StoreUnavailable


def test_an_event_is_its_fields_then_a_blank_line() -> None:
    assert sse("usage", b'{"a":1}', "abc") == b'event: usage\nid: abc\ndata: {"a":1}\n\n'
    assert sse("problem", b"{}") == b"event: problem\ndata: {}\n\n"


def test_an_answers_id_follows_its_bytes() -> None:
    assert answer_id(b'{"a":1}') == answer_id(b'{"a":1}')
    assert answer_id(b'{"a":1}') != answer_id(b'{"a":2}')
    assert len(answer_id(b"")) == 32


class Views:
    """Where the views stand, as the pulse reads them; counts the reads, and fails them on demand."""

    def __init__(self) -> None:
        self.positions: dict[int, int] = {0: 10, 1: 20}
        self.reads = 0
        self.away = False

    def read(self) -> dict[int, int]:
        self.reads += 1
        if self.away:
            raise StoreUnavailable("views away")
        return dict(self.positions)


async def started(pulse: ViewsPulse) -> None:
    pulse.attach()
    while pulse.position(0) == -1:
        await asyncio.sleep(0.001)


async def test_a_watch_wakes_when_its_partition_moves_and_not_for_another() -> None:
    views = Views()
    pulse = ViewsPulse(views.read, 0.005, anyio.CapacityLimiter(1))
    await started(pulse)
    try:
        mine, theirs = pulse.position(0), pulse.position(1)
        waiting = asyncio.create_task(pulse.moved(0, mine, timeout=5))
        views.positions[1] += 1  # another partition
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert pulse.position(1) == theirs + 1
        views.positions[0] += 3
        assert await waiting is True
        assert pulse.position(0) == mine + 3
        assert await pulse.moved(0, mine, timeout=5) is True  # already moved past what the caller saw
        assert await pulse.moved(0, pulse.position(0), timeout=0.02) is False  # nothing since: the timeout
    finally:
        pulse.detach()


async def test_the_views_are_read_only_while_someone_watches() -> None:
    views = Views()
    pulse = ViewsPulse(views.read, 0.005, anyio.CapacityLimiter(1))
    await asyncio.sleep(0.03)
    assert views.reads == 0
    await started(pulse)
    pulse.attach()  # a second watch
    pulse.detach()
    await asyncio.sleep(0.03)
    assert views.reads > 1  # one watch is still open
    pulse.detach()
    await asyncio.sleep(0.01)
    stopped = views.reads
    await asyncio.sleep(0.03)
    assert views.reads == stopped


async def test_the_views_away_leave_the_watches_waiting_and_the_pulse_reading() -> None:
    views = Views()
    pulse = ViewsPulse(views.read, 0.005, anyio.CapacityLimiter(1))
    await started(pulse)
    try:
        seen = pulse.position(0)
        views.away = True
        views.positions[0] += 1
        assert await pulse.moved(0, seen, timeout=0.05) is False
        views.away = False
        assert await pulse.moved(0, seen, timeout=5) is True
    finally:
        pulse.detach()
