"""The waits of a background loop (the runner, the outbox relay), taken over by a test: a clock that
moves only when the test moves it, and a sleep and a pause that return at once and record what they
were asked to wait. At each pause the next of `rounds` runs (the test's change to the world between
two rounds of the loop); when none is left, the pause stops the loop. So a test pins how long the
loop waits, and when, without waiting at all."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MOST_WAITS = 100  # a loop that never pauses (a mutant) is stopped here rather than spin forever


@dataclass
class Waits:
    stop: asyncio.Event  # the loop's
    rounds: list[Callable[[], Awaitable[None]]]
    now: float = 0.0
    waited: list[tuple[str, float]] = field(default_factory=list)  # ("sleep" | "pause", seconds)
    woken_at_pause: list[bool] = field(default_factory=list)  # whether the loop's wake was set as it paused

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waited.append(("sleep", seconds))
        self._spin_guard()

    async def pause(self, stop: asyncio.Event, seconds: float, woken: asyncio.Event | None = None) -> bool:
        assert stop is self.stop, "the loop pauses on another stop than its own"
        self.waited.append(("pause", seconds))
        self.woken_at_pause.append(woken is not None and woken.is_set())
        if self.rounds:
            await self.rounds.pop(0)()
        if not self.rounds:
            stop.set()
        self._spin_guard()
        return woken is not None and woken.is_set()

    def _spin_guard(self) -> None:
        if len(self.waited) >= MOST_WAITS:
            self.stop.set()
