"""The Faust worker as a subprocess, configured only through the environment like `omni worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from schemas.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
WORKER_BATCH = 100  # small batches, so a kill lands between (and inside) many of them


class WorkerProcess:
    """`python -m streams.faust_app`, configured only through the environment like `omni worker`."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        # Popen duplicates the descriptor into the child; ours can be closed at once.
        with open(self.logs / f"worker-{self.runs}.log", "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.faust_app"], cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT
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

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples, by name and labels as exposed (`name{label="value"}`)."""
        port = self.env["OMNI_WORKER_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        return {name: float(value) for name, value in samples}

    def log_text(self) -> str:
        return "".join((self.logs / f"worker-{run}.log").read_text(errors="replace") for run in range(1, self.runs + 1))

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def worker_env(topics: Topics, kafka_servers: str, database_url: str, schema: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMNI_MODE": "kafka",
        "OMNI_TOPIC_PREFIX": topics.prefix,
        "OMNI_USAGE_PARTITIONS": str(topics.usage_partitions),
        "OMNI_DATABASE_SCHEMA": schema,
        "OMNI_DATA_DIR": str(data_dir),
        "OMNI_RUNNER_BATCH_SIZE": str(WORKER_BATCH),
        "OMNI_LOG_LEVEL": "INFO",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_servers,
        "DATABASE_URL": database_url,
    }
