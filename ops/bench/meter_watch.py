"""Benchmark: live meter watches (`GET /v1/meters/{slug}/watch`, README "Watching a meter").

`omni serve` (a subprocess: embedded mode, or Kafka mode with a Faust worker) takes a steady,
open-loop load of batched events spread over `tenants` tenants, in two phases of `duration`
seconds: first with no watch open, then with `watches` open over those tenants (at most five a
tenant, the default bound) and reading every event they are sent. In the second phase a probe
tenant of its own gets one event `probes` times a second; it has one watch and, beside it, a
poller of the meter query every `poll_ms`: the figures are the time from each probe's 202 to the
watch's `usage` event holding it, beside the time to the poller seeing it (the same run and load),
and the CPU the API and the rest used in each phase, so what the open watches cost shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import orjson

from ops.bench.common import (
    BATCH_TYPE,
    METER,
    Api,
    Report,
    Stack,
    Table,
    cloud_events,
    cpu_cores,
    cpu_snapshot,
    load_client,
    opt,
    percentile,
    post_batch,
    ratio,
    serve,
)

NAME = "meter_watch"
PER_TENANT = 5  # OMNI_MAX_WATCHES_PER_TENANT's default


@dataclasses.dataclass
class Options:
    mode: str = opt("embedded", "embedded, or kafka (one API process, one Faust worker)")
    rate: int = opt(2000, "events/s of the steady load")
    batch: int = opt(100, "events per request")
    duration: float = opt(15.0, "seconds of load per phase")
    watches: int = opt(100, "watches open in the second phase")
    probes: float = opt(4.0, "probe events per second (second phase)")
    poll_ms: float = opt(10.0, "milliseconds between the poller's meter queries")


def total(answer: dict[str, Any]) -> Decimal:
    return sum((Decimal(str(row["value"])) for row in answer["data"]), Decimal(0))


class Watcher:
    """One watch, read to the end: how many `usage` events came, and when each total was first seen."""

    def __init__(self, client: httpx.AsyncClient, key: str) -> None:
        self.client, self.key = client, key
        self.events = 0
        self.seen: list[tuple[float, Decimal]] = []
        self.opened = asyncio.Event()

    async def run(self) -> None:
        path = f"/v1/meters/{METER['slug']}/watch"
        async with self.client.stream("GET", path, headers=Api.auth(self.key)) as response:
            response.raise_for_status()
            self.opened.set()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    self.events += 1
                    self.seen.append((time.monotonic(), total(orjson.loads(line[6:]))))


async def load(stack: Stack, keys: list[str], o: Options, stop: asyncio.Event) -> int:
    """Batches at `rate`, round-robin over `keys`, on a fixed schedule, until `stop`; the events sent."""
    interval = o.batch / o.rate
    run = uuid.uuid4().hex[:8]
    sent = 0
    url = f"{stack.api.base_url}/v1/events"
    async with load_client(32) as http:
        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        i = 0
        while not stop.is_set():
            delay = started + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = orjson.dumps(cloud_events(f"{run}-{i}", o.batch))
            headers = {**Api.auth(keys[i % len(keys)]), "Content-Type": BATCH_TYPE}
            tasks.append(asyncio.create_task(post_batch(http, url, body, headers, o.batch)))
            sent += o.batch
            i += 1
        await asyncio.gather(*tasks)
    return sent


async def phase(stack: Stack, keys: list[str], o: Options) -> tuple[dict[str, float], int]:
    stop = asyncio.Event()
    before = cpu_snapshot(stack.pids())
    sending = asyncio.create_task(load(stack, keys, o, stop))
    await asyncio.sleep(o.duration)
    stop.set()
    sent = await sending
    return cpu_cores(before, cpu_snapshot(stack.pids())), sent


async def probing(
    stack: Stack, probe_key: str, watcher: Watcher, o: Options, stop: asyncio.Event
) -> tuple[list[float], list[float]]:
    """Probe events to the probe tenant; for each, ms from its 202 to the watch and to the poller seeing it."""
    run = uuid.uuid4().hex[:8]
    expected = Decimal(0)
    to_watch: list[float] = []
    to_poll: list[float] = []
    async with httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as http:
        k = 0
        while not stop.is_set():
            event = cloud_events(f"probe-{run}", 1, start=k)[0]
            expected += Decimal(event["data"]["tokens"])
            mark = len(watcher.seen)
            response = await http.post(
                "/v1/events", content=orjson.dumps([event]), headers={**Api.auth(probe_key), "Content-Type": BATCH_TYPE}
            )
            response.raise_for_status()
            acked = time.monotonic()
            polled = None
            while polled is None and time.monotonic() - acked < 30:
                if await stack.api.total(probe_key) >= expected:
                    polled = time.monotonic()
                else:
                    await asyncio.sleep(o.poll_ms / 1000)
            while time.monotonic() - acked < 30 and not any(t >= expected for _, t in watcher.seen[mark:]):
                await asyncio.sleep(0.002)
            watched = next((at for at, t in watcher.seen[mark:] if t >= expected), None)
            if polled is not None and watched is not None:
                to_poll.append((polled - acked) * 1000)
                to_watch.append(max(0.0, watched - acked) * 1000)
            k += 1
            await asyncio.sleep(max(0.0, 1 / o.probes - (time.monotonic() - acked)))
    return to_watch, to_poll


async def run(o: Options) -> Report:
    tenants = max(1, -(-o.watches // PER_TENANT))
    async with serve(o.mode) as stack:
        keys = [await stack.tenant(f"watch-{n}") for n in range(tenants)]
        probe_key = await stack.tenant("watch-probe")
        quiet, sent_quiet = await phase(stack, keys, o)

        async with contextlib.AsyncExitStack() as opened:
            client = await opened.enter_async_context(
                httpx.AsyncClient(
                    base_url=stack.api.base_url, timeout=httpx.Timeout(30, read=None), limits=httpx.Limits(max_connections=None)
                )
            )
            watchers = [Watcher(client, keys[n % tenants]) for n in range(o.watches)]
            probe = Watcher(client, probe_key)
            reading = [asyncio.create_task(w.run()) for w in [*watchers, probe]]
            await asyncio.gather(*(w.opened.wait() for w in [*watchers, probe]))
            stop = asyncio.Event()
            probes = asyncio.create_task(probing(stack, probe_key, probe, o, stop))
            watched, sent_watched = await phase(stack, keys, o)
            stop.set()
            to_watch, to_poll = await probes
            for task in reading:
                task.cancel()
            await asyncio.gather(*reading, return_exceptions=True)
    api = f"{o.mode}-api"
    rows = [
        ["no watch open", round(sent_quiet / o.duration), quiet.get(api, 0.0), sum(v for r, v in quiet.items() if r != "stolen"), "", ""],
        [f"{o.watches} watches open", round(sent_watched / o.duration), watched.get(api, 0.0),
         sum(v for r, v in watched.items() if r != "stolen"), sum(w.events for w in watchers), len(to_watch)],
    ]  # fmt: skip
    latency = [
        ["watch: 202 -> usage event", percentile(to_watch, 50), percentile(to_watch, 99)],
        [f"poller every {o.poll_ms:g} ms: 202 -> query shows it", percentile(to_poll, 50), percentile(to_poll, 99)],
        ["watch / poller", ratio(percentile(to_watch, 50), percentile(to_poll, 50)), ratio(percentile(to_watch, 99), percentile(to_poll, 99))],
    ]  # fmt: skip
    return Report(
        NAME,
        o,
        [
            Table(
                f"{NAME}: {o.mode} mode, {o.rate} events/s over {tenants} tenants, {o.duration:.0f} s per phase",
                ["phase", "events/s sent", "API cores", "all cores", "usage events to watches", "probes"],
                rows,
            ),
            Table(f"{NAME}: how soon a probe's usage shows (ms)", ["path", "p50", "p99"], latency),
        ],
        figures={
            "api_cores": {"quiet": quiet.get(api, 0.0), "watched": watched.get(api, 0.0)},
            "api_cores_ratio": ratio(watched.get(api, 0.0), quiet.get(api, 0.0)),
            "watch_ms": {"p50": percentile(to_watch, 50), "p99": percentile(to_watch, 99)},
            "poll_ms": {"p50": percentile(to_poll, 50), "p99": percentile(to_poll, 99)},
            "usage_events": sum(w.events for w in watchers),
        },
        notes=["the watch reads the views every OMNI_WATCH_POLL_MS (250 ms by default); the poller asks the query itself"],
    )


if __name__ == "__main__":
    from ops.bench.run import main

    raise SystemExit(main(only=NAME))
