"""The Faust worker (and the relay) as subprocesses, configured only through the environment like `omni worker`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from schemas.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
WORKER_BATCH = 100  # small batches, so a kill lands between (and inside) many of them
WORKER = ("-m", "streams.faust_app")
RELAY = ("-m", "omni.cli", "relay")


class WorkerProcess:
    """`python -m streams.faust_app` (or `args`), configured only through the environment like `omni worker`.

    Its /metrics and /readyz are on the port in `env[port_setting]`, if set."""

    def __init__(
        self,
        env: dict[str, str],
        logs: Path,
        *,
        args: Sequence[str] = WORKER,
        name: str = "worker",
        port_setting: str = "OMNI_WORKER_METRICS_PORT",
    ) -> None:
        self.env = env
        self.logs = logs
        self.args = tuple(args)
        self.name = name
        self.port_setting = port_setting
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        # Popen duplicates the descriptor into the child; ours can be closed at once.
        with open(self.logs / f"{self.name}-{self.runs}.log", "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, *self.args], cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM: Faust's graceful stop (commits the group's offsets on the way out)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def ensure_dead(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    @property
    def exited(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return None if self.process is None else self.process.poll()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.env[self.port_setting]}{path}"

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples, by name and labels as exposed (`name{label="value"}`)."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as response:
            text = response.read().decode()
        samples = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        return {name: float(value) for name, value in samples}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """GET /readyz: (status, body); (0, {"error": ...}) while nothing answers on the port."""
        try:
            with urllib.request.urlopen(self.url("/readyz"), timeout=5) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as refused:
            status, body = refused.code, refused.read()
        except OSError as failure:
            return 0, {"error": repr(failure)}
        try:
            return status, json.loads(body)
        except ValueError:
            return 0, {"error": f"not a readiness answer: {status} {body[:200]!r}"}

    def log_text(self) -> str:
        return "".join((self.logs / f"{self.name}-{run}.log").read_text(errors="replace") for run in range(1, self.runs + 1))

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def report(self, lines: int = 30) -> str:
        """What a failed wait shows of this process: its state, its last readiness, its log's tail."""
        state = "running" if self.exited is None else f"exited with {self.exited}"
        ready = f"; /readyz: {self.readiness()}" if self.env.get(self.port_setting) else ""
        return f"--- {self.name} ({state}){ready}; last {lines} log lines:\n{self.tail(lines)}"


async def wait_ready(processes: Sequence[WorkerProcess], timeout: float, what: str = "readiness") -> None:
    """Poll each process's /readyz until all answer 200; fail with each one's reasons and log if not in time."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = [(await asyncio.to_thread(p.readiness))[0] for p in processes]
        if all(status == 200 for status in statuses):
            return
        for p in processes:
            if p.exited is not None:
                pytest.fail(f"{p.name} exited while waiting for {what}:\n" + "\n".join(q.report() for q in processes))
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}:\n" + "\n".join(p.report() for p in processes))
        await asyncio.sleep(0.2)


def worker_env(topics: Topics, kafka_servers: str, database_url: str, schema: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMNI_MODE": "kafka",
        "OMNI_GDPR_MASTER_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",  # `omni serve` refuses to start in Kafka mode without one
        "OMNI_TOPIC_PREFIX": topics.prefix,
        "OMNI_USAGE_PARTITIONS": str(topics.usage_partitions),
        "OMNI_DATABASE_SCHEMA": schema,
        "OMNI_DATA_DIR": str(data_dir),
        "OMNI_RUNNER_BATCH_SIZE": str(WORKER_BATCH),
        "OMNI_LOG_LEVEL": "INFO",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_servers,
        "DATABASE_URL": database_url,
    }
