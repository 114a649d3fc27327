"""Benchmarks 1 and 6: ingest to meter in Kafka mode, and the peak RSS of the API and the worker.

Batched CloudEvents POSTs over real HTTP to `omni serve` (Kafka mode, a
subprocess) with the Faust worker (`python -m streams.faust_app`, another
subprocess) folding into a SUM meter, timed until the meter query shows every
event. Baseline: Kafka's ProducerPerformance, same record count, the size of
our encoded envelopes, acks=all, on the same broker, right after each round
(the median of three runs: one run of the JVM producer over 100,000 records
varies by half from the next).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import statistics
import subprocess
import time
import uuid

from ops.bench.common import (
    KAFKA,
    ROOT,
    STOLEN,
    Report,
    Table,
    Target,
    bodies,
    cloud_events,
    cpu_cores,
    cpu_per_event,
    cpu_snapshot,
    encoded,
    expected_total,
    expected_totals,
    machine,
    opt,
    percentile,
    post_all,
    ratio,
    serve,
    sizes,
)

NAME = "ingest_kafka"
TARGET_RATE = 25_000
TARGET_SHARE = 0.30


@dataclasses.dataclass
class Options:
    events: int = opt(100_000, "events per round (one round per batch size)")
    batch_sizes: str = opt("100,1000", "events per request, one round each")
    clients: int = opt(16, "concurrent HTTP connections (4 leave a quarter of the 2 cores idle at 100 events a request)")
    partitions: int = opt(4, "usage topic partitions")
    workers: int = opt(2, "Faust workers in the consumer group (one per core)")
    apis: int = opt(1, "API processes (replicas; the clients spread over them)")
    tenants: int = opt(4, "tenants the batches go to, round-robin, spread evenly over the partitions (1: one tenant)")
    timeout: float = opt(900.0, "seconds a round may take before it fails")
    raw_runs: int = opt(3, "ProducerPerformance runs per round; the baseline is their median")


async def producer_perf(topic: str, partitions: int, records: int, size: int) -> float:
    """Kafka's own producer on the same broker: records/s as it reports them."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    command = [
        "bash", "ops/services/kafka.sh", "producer-perf", "--topic", topic, "--num-records", str(records),
        "--record-size", str(size), "--throughput", "-1",
        "--producer-props", f"bootstrap.servers={KAFKA}", "acks=all", "enable.idempotence=true", "linger.ms=5",
    ]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = re.search(rf"{records} records sent, ([\d.]+) records/sec", done.stdout)
    if done.returncode or not summary:
        raise RuntimeError(f"ProducerPerformance failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return float(summary.group(1))


async def run(o: Options) -> Report:
    rows: list[list[object]] = []
    cpu_rows: list[list[object]] = []
    micros_rows: list[list[object]] = []
    figures: dict[str, object] = {"rounds": []}
    targets: list[Target] = []
    async with serve("kafka", partitions=o.partitions, workers=o.workers, apis=o.apis) as stack:
        idle = stack.memory()
        run_id = uuid.uuid4().hex[:8]
        # Warm-up: connections, the meter's catch-up past the API's own api_call events, JIT-free but cache-warm.
        warm = await stack.tenant("warm-up")
        await post_all(stack.api.base_url, warm, bodies(cloud_events(f"{run_id}-w", 2000), 500), 2)
        await stack.api.wait_total(warm, expected_total(0, 2000), timeout=120)
        stack.batches()  # forget the warm-up's
        for size in sizes(o.batch_sizes):
            keys = await stack.tenants_over_partitions(f"batch-{size}", o.tenants, o.partitions)
            events = cloud_events(f"{run_id}-{size}", o.events)
            work = bodies(events, size)
            record_size = round(sum(map(len, encoded(events[:1000]))) / min(1000, o.events))
            cpu_before = cpu_snapshot(stack.pids())
            started = time.monotonic()
            latencies = await post_all(stack.urls, keys, work, o.clients)
            acked = time.monotonic()
            visible = max(
                [
                    await stack.api.wait_total(key, total, timeout=o.timeout)
                    for key, total in expected_totals(keys, work, size).items()
                ]
            )
            cores = cpu_cores(cpu_before, cpu_snapshot(stack.pids()))
            stolen = cores.pop(STOLEN)
            worker_batches = stack.batches()
            ours = o.events / (visible - started)
            per_event = cpu_per_event(cores, ours)
            cpu_rows.append([size, *cores.values(), round(sum(cores.values()), 2), stolen])
            micros_rows.append([size, *per_event.values(), round(sum(per_event.values()), 1)])
            # Short runs of the JVM producer vary by half from one to the next on this machine: take the median.
            raw_runs = [
                await producer_perf(f"{stack.prefix}.perf-{size}-{n}", o.partitions, o.events, record_size)
                for n in range(o.raw_runs)
            ]
            raw = statistics.median(raw_runs)
            round_ = {
                "batch_size": size,
                "events": o.events,
                "record_bytes": record_size,
                "seconds_to_last_202": acked - started,
                "seconds_to_visible": visible - started,
                "accepted_per_s": o.events / (acked - started),
                "ours_per_s": ours,
                "raw_per_s": raw,
                "raw_runs_per_s": raw_runs,
                "ratio": ratio(ours, raw),
                "request_p50_ms": percentile(latencies, 50) * 1000,
                "request_p99_ms": percentile(latencies, 99) * 1000,
                "cpu_cores": cores,
                "cpu_stolen_cores": stolen,
                "cpu_micros_per_event": per_event,
                "worker_batches": worker_batches,
            }
            figures["rounds"].append(round_)  # type: ignore[attr-defined]
            rows.append(
                [
                    size,
                    o.events,
                    round_["accepted_per_s"],
                    ours,
                    raw,
                    round_["ratio"],
                    round_["request_p50_ms"],
                    round_["request_p99_ms"],
                ]
            )
            targets.append(Target(f"events/s end to end, {size}/request", ours, TARGET_RATE))
            targets.append(Target(f"share of raw Kafka, {size}/request", ratio(ours, raw), TARGET_SHARE))
        peak = stack.memory()
    figures["memory_kib"] = {"idle": idle, "end": peak}
    memory_rows = [
        [name, idle.get(name, {}).get("VmRSS", 0) / 1024, stats["VmHWM"] / 1024, stats["VmRSS"] / 1024]
        for name, stats in peak.items()
    ]
    return Report(
        NAME,
        o,
        [
            Table(
                f"{NAME}: Kafka mode, HTTP POST -> {o.apis} API process(es) -> Kafka -> {o.workers} Faust worker(s) "
                f"-> PostgreSQL meter view ({o.clients} clients, {o.tenants} tenants)",
                ["batch", "events", "accepted/s", "ours e2e/s", "raw Kafka/s", "ours/raw", "req p50 ms", "req p99 ms"],
                rows,
            ),
            Table(
                f"CPU: cores busy per role while ours ran (machine: {machine()['nproc']} cores; "
                "stolen: taken by other virtual machines, in no total)",
                ["batch", *figures["rounds"][0]["cpu_cores"], "total", STOLEN],  # type: ignore[index]
                cpu_rows,
            ),
            Table(
                "CPU per event: microseconds each role spent per event (steadier than events/s on a shared machine)",
                ["batch", *figures["rounds"][0]["cpu_micros_per_event"], "total"],  # type: ignore[index]
                micros_rows,
            ),
            Table(
                "memory (benchmark 6): peak RSS during benchmark 1",
                ["process", "idle RSS MiB", "peak RSS MiB (VmHWM)", "end RSS MiB"],
                memory_rows,
            ),
        ],
        figures,
        targets,
        notes=[
            f"raw = org.apache.kafka.tools.ProducerPerformance, acks=all, idempotent, linger.ms=5, same record count and size; "
            f"median of {o.raw_runs} runs"
        ],
    )


if __name__ == "__main__":
    from ops.bench.run import main

    raise SystemExit(main(only=NAME))
