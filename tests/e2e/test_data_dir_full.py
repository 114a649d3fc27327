"""A full disk under embedded mode's data directory: 503 (never 500, never a false 202), and once
there is room again, every event answered 202 is counted exactly once.

A walkthrough filled a small file system under a running `omni serve`: ingest answered 503 as it
should, but a command (POST /v1/tenants) answered 500, a `sqlite3.OperationalError: database or
disk is full` from the data keys' SQLite file that nothing turned into an outage; and the log's
503s were logged as "cannot rollback - no transaction is active" (SQLite had rolled the failed
COMMIT back itself, and the ROLLBACK after it hid why). The file system here is a tmpfs of 3 MB
(mounting it needs root, as the suite runs); tests/unit/test_sqlite_outages.py holds the same
mapping with SQLite's own size limit, anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.conftest import ADMIN, BATCH
from tests.e2e.test_bad_input import assert_problem
from tests.e2e.test_crash_restart_embedded import free_port


def test_a_full_file_system_refuses_with_503_and_loses_no_event_answered_202(tmp_path: Path) -> None:
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small file system needs mount (root): {mounted.stderr.decode().strip()}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMNI_DATA_DIR": str(mount_point / "data"), "OMNI_ADMIN_KEY": ADMIN, "OMNI_MODE": "embedded"}
    env |= {"OMNI_BILLING_AUTO_CLOSE": "false", "OMNI_USAGE_PARTITIONS": "2", "OMNI_MIN_FREE_DISK_MB": "1"}
    log_path = tmp_path / "server.log"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "omni.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, log_path.read_text()
            time.sleep(0.1)
        meter = {"slug": "calls", "event_type": "inference", "aggregation": "COUNT"}
        assert httpx.post(url + "/v1/meters", json=meter, headers=admin).status_code == 201
        tenant = httpx.post(url + "/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=admin).json()
        key = {"Authorization": f"Bearer {tenant['api_key']}", "Content-Type": BATCH}

        answered: set[str] = set()
        refused = 0
        padding = "x" * 2000
        with httpx.Client(timeout=30) as client:
            for n in range(200):
                events = [
                    {
                        "specversion": "1.0",
                        "id": f"{n}-{i}",
                        "source": "s",
                        "type": "inference",
                        "subject": "u",
                        "data": {"pad": padding},
                    }
                    for i in range(100)
                ]
                answer = client.post(url + "/v1/events", content=orjson.dumps(events), headers=key)
                if answer.status_code == 202:
                    assert answer.json()["accepted"] == 100
                    answered.update(event["id"] for event in events)
                    continue
                assert_problem(answer, 503)
                refused += 1
                if refused == 3:
                    break
            assert refused == 3, "the file system never filled"
            command = client.post(url + "/v1/tenants", json={"name": "beta", "plan": "pro"}, headers=admin)
            assert_problem(command, 503)
            full = client.get(url + "/readyz")  # readiness says so too (it answered 200 all along)
            assert full.status_code == 503 and full.json()["checks"]["disk"].startswith("unavailable: LowOnDisk"), full.text

            subprocess.run(["mount", "-o", "remount,size=64m", str(mount_point)], check=True)
            deadline = time.monotonic() + 60
            while True:
                data = client.get(url + "/v1/meters/calls/query", headers=key).json()["data"]
                counted = data[0]["value"] if data else 0
                if counted >= len(answered) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert counted == len(answered)
            assert client.post(url + "/v1/tenants", json={"name": "beta", "plan": "pro"}, headers=admin).status_code == 201
            assert client.get(url + "/readyz").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
        subprocess.run(["umount", str(mount_point)], check=True)
    logged = log_path.read_text()
    assert "database or disk is full" in logged
    assert "cannot rollback" not in logged
