"""Benchmark: the cost of sealing personal data at the door (GDPR, README "GDPR").

`omni serve` (a subprocess; embedded mode, or Kafka mode with a Faust worker) takes the same batched CloudEvents over real HTTP in
two variants, in the same run and interleaved round by round: `plain`, an event type without a
data class, and `sealed`, an event type whose data class declares two of the data's values
personal (`$.data.email`, `$.data.prompt`), so admission seals each with AES-256-GCM under the
person's data key and adds its pseudonym. Every event carries both values in either variant, so
the bytes sent are the same. Each variant has its own tenant and its own SUM meter; a round is
timed from its first POST to the meter showing every event (and to the last 202). A warm-up round
per variant first creates the persons' data keys (`subjects` of them), so the timed rounds measure
the steady state: keys in memory. Target: sealed at no less than 85% of plain (encryption costs at
most 15%).
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ops.bench.common import ADMIN_KEY, Report, Table, Target, bodies, opt, post_all, ratio, serve

NAME = "gdpr_ingest"
VARIANTS = {"plain": "chat-plain", "sealed": "chat-sealed"}
DATA_CLASS = {"personal": ["$.data.email", "$.data.prompt"]}
PROMPT = "Summarise the attached contract for me and list every clause about termination, in plain words."


@dataclasses.dataclass
class Options:
    events: int = opt(20_000, "events per round and variant")
    rounds: int = opt(3, "timed rounds per variant, interleaved")
    batch: int = opt(500, "events per request")
    clients: int = opt(4, "concurrent HTTP connections")
    subjects: int = opt(1000, "distinct persons (each has a data key)")
    timeout: float = opt(600.0, "seconds a round may take before it fails")
    mode: str = opt("embedded", "embedded, or kafka (one API process, one Faust worker)")


def events(run: str, event_type: str, count: int, subjects: int) -> list[dict[str, Any]]:
    moment = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return [
        {
            "specversion": "1.0",
            "id": f"{run}-{i}",
            "source": "bench-gateway",
            "type": event_type,
            "subject": f"person-{i % subjects}",
            "time": moment,
            "data": {"tokens": 1 + i % 50, "model": "large", "email": f"person-{i % subjects}@example.com", "prompt": PROMPT},
        }
        for i in range(count)
    ]


async def total(stack: Any, key: str, slug: str) -> Decimal:
    response = await stack.api.http.get(f"/v1/meters/{slug}/query", headers=stack.api.auth(key))
    response.raise_for_status()
    return sum((Decimal(str(row["value"])) for row in response.json()["data"]), Decimal(0))


async def wait_total(stack: Any, key: str, slug: str, expected: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while await total(stack, key, slug) != expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{slug}: the meter never showed {expected}")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def run(o: Options) -> Report:
    run_id = uuid.uuid4().hex[:8]
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    async with serve(o.mode) as stack:
        admin = stack.api.auth(ADMIN_KEY)
        (await stack.api.http.put(f"/v1/data-classes/{VARIANTS['sealed']}", json=DATA_CLASS, headers=admin)).raise_for_status()
        keys, sums = {}, {}
        for name, event_type in VARIANTS.items():
            meter = {"slug": f"tokens-{name}", "event_type": event_type, "aggregation": "SUM", "value_property": "$.data.tokens"}
            (await stack.api.http.post("/v1/meters", json=meter, headers=admin)).raise_for_status()
            keys[name] = await stack.tenant(f"gdpr-{name}")
            sums[name] = 0
        for round_ in range(o.rounds + 1):  # round 0 warms up: the persons' keys are made there
            for name, event_type in VARIANTS.items():
                batch = events(f"{run_id}-{round_}", event_type, o.events, o.subjects)
                sums[name] += sum(e["data"]["tokens"] for e in batch)
                work = bodies(batch, o.batch)
                started = time.monotonic()
                await post_all(stack.api.base_url, keys[name], work, o.clients)
                acked = time.monotonic()
                visible = await wait_total(stack, keys[name], f"tokens-{name}", sums[name], o.timeout)
                if round_:
                    figures[name].append(
                        {"accepted_per_s": o.events / (acked - started), "e2e_per_s": o.events / (visible - started)}
                    )
    medians = {
        name: {what: statistics.median(r[what] for r in runs) for what in ("accepted_per_s", "e2e_per_s")}
        for name, runs in figures.items()
    }
    accepted_ratio = ratio(medians["sealed"]["accepted_per_s"], medians["plain"]["accepted_per_s"])
    e2e_ratio = ratio(medians["sealed"]["e2e_per_s"], medians["plain"]["e2e_per_s"])
    rows = [[name, o.events, o.rounds, medians[name]["accepted_per_s"], medians[name]["e2e_per_s"]] for name in VARIANTS] + [
        ["sealed/plain", None, None, accepted_ratio, e2e_ratio]
    ]
    return Report(
        NAME,
        o,
        [
            Table(
                f"{NAME}: {o.mode} mode, HTTP POST -> admission (sealing) -> log -> meter view, median of rounds ({o.clients} clients, {o.batch}/request)",
                ["variant", "events", "rounds", "accepted/s", "e2e/s"],
                rows,
            )
        ],
        {"rounds": figures, "medians": medians, "accepted_ratio": accepted_ratio, "e2e_ratio": e2e_ratio},
        [
            Target("sealed/plain, events/s to the last 202", accepted_ratio, 0.85),
            Target("sealed/plain, events/s end to end", e2e_ratio, 0.85),
        ],
        notes=[f"two personal values per event ({len(PROMPT)}-character prompt, an e-mail address), {o.subjects} persons"],
    )


if __name__ == "__main__":
    from ops.bench.run import main

    raise SystemExit(main(only=NAME))
