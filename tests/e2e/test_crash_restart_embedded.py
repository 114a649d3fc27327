"""Kill -9 the embedded server while its runner folds; after restarts every meter equals the truth."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import orjson

from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH

BATCHES, PER_BATCH = 24, 500
KILL_AFTER = {5, 13, 19}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "OMNI_DATA_DIR": str(self.data_dir),
            "OMNI_ADMIN_KEY": ADMIN,
            "OMNI_USAGE_PARTITIONS": "3",
            "OMNI_MODE": "embedded",
        }
        log = open(self.data_dir.parent / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omni.cli", "serve", "--port", str(self.port)], env=env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def test_kill_minus_nine_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    server = Server(tmp_path / "data")
    server.start()
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        tenant = httpx.post(server.url + "/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=admin).json()
        key = {"Authorization": f"Bearer {tenant['api_key']}"}
        for meter in (
            {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"},
            {"slug": "inferences", "event_type": "inference", "aggregation": "COUNT"},
        ):
            assert httpx.post(server.url + "/v1/meters", json=meter, headers=admin).status_code == 201

        truth_sum, truth_count = Decimal(0), 0
        for b in range(BATCHES):
            events = [
                cloud_event(f"b{b}-{i}", subject=f"u{i % 13}", data={"tokens": (b * PER_BATCH + i) % 7 + 1})
                for i in range(PER_BATCH)
            ]
            body = orjson.dumps(events)
            response = httpx.post(server.url + "/v1/events", content=body, headers={**key, "Content-Type": BATCH}, timeout=30)
            assert response.status_code == 202, response.text
            assert response.json()["accepted"] == PER_BATCH
            truth_sum += sum(e["data"]["tokens"] for e in events)
            truth_count += PER_BATCH
            if b in KILL_AFTER:
                server.kill()  # the runner is still folding what was just accepted
                server.start()
                again = httpx.post(server.url + "/v1/events", content=body, headers={**key, "Content-Type": BATCH}, timeout=30)
                assert again.json() == {**again.json(), "accepted": 0, "duplicates": PER_BATCH}

        def value(slug: str) -> Decimal:
            response = httpx.get(server.url + f"/v1/meters/{slug}/query", headers=key)
            data = orjson.loads(response.content)["data"]
            return Decimal(str(data[0]["value"])) if data else Decimal(0)

        deadline = time.monotonic() + 90
        while value("inferences") < truth_count and time.monotonic() < deadline:
            time.sleep(0.2)
        assert value("inferences") == truth_count
        assert value("tokens") == truth_sum
        time.sleep(1.0)  # and it stays there: nothing is applied twice later
        assert value("inferences") == truth_count
    finally:
        server.stop()
