"""`omni backup` while `omni serve` ingests: the copy restores to views that agree with its log.

A walkthrough found no documented way to back up a running embedded data directory: its three
SQLite files refer to each other (the views' offsets into the log, the log's store positions, the
data keys of sealed events), and copies of each taken one after another are of different moments.
`omni backup DEST` copies them as of one instant (omni/backup.py). Here the copy is taken while
events stream in; a server started on it must hold every event answered 202 before the backup
began, fold views that a full rebuild from the copy's log finds no difference with, and count new
events and every event ever answered, sent again, exactly once. A copy of the files one after
another (the log, then the views half a second later) fails both: views ahead of their log, and
new events appended at offsets those views say were folded, never counted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson

from tests.e2e.conftest import ADMIN, BATCH
from tests.e2e.test_crash_restart_embedded import Server

ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def omni(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMNI_DATA_DIR": str(data_dir), "OMNI_ADMIN_KEY": ADMIN, "OMNI_MODE": "embedded"}
    env["OMNI_USAGE_PARTITIONS"] = "3"  # as Server starts it
    return subprocess.run([sys.executable, "-m", "omni.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def events(prefix: str, count: int) -> list[dict[str, object]]:
    return [
        {"specversion": "1.0", "id": f"{prefix}-{i}", "source": "s", "type": "inference", "subject": "u", "data": {"tokens": 3}}
        for i in range(count)
    ]


def counted(server: Server, key: dict[str, str]) -> int:
    data = httpx.get(f"{server.url}/v1/meters/calls/query", headers=key).json()["data"]
    return int(data[0]["value"]) if data else 0


def test_a_backup_taken_under_ingest_restores_every_event_once(tmp_path: Path) -> None:
    live = Server(tmp_path / "data")
    live.start()
    answered: dict[str, list[dict[str, object]]] = {}  # each batch answered 202, by its first id
    stop = threading.Event()
    try:
        meter = {"slug": "calls", "event_type": "inference", "aggregation": "COUNT"}
        assert httpx.post(f"{live.url}/v1/meters", json=meter, headers=ADMIN_AUTH).status_code == 201
        tenant = httpx.post(f"{live.url}/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=ADMIN_AUTH).json()
        key = {"Authorization": f"Bearer {tenant['api_key']}"}

        def ingest() -> None:
            with httpx.Client(timeout=30) as client:
                n = 0
                while not stop.is_set():
                    batch = events(f"b{n}", 50)
                    n += 1
                    answer = client.post(
                        f"{live.url}/v1/events", content=orjson.dumps(batch), headers={**key, "Content-Type": BATCH}
                    )
                    assert answer.status_code == 202, answer.text
                    answered[str(batch[0]["id"])] = batch

        streaming = threading.Thread(target=ingest)
        streaming.start()
        while len(answered) < 40 and streaming.is_alive():
            time.sleep(0.05)
        before = list(answered.values())
        copy = omni(tmp_path / "data", "backup", str(tmp_path / "backup"))
        time.sleep(0.3)  # and events keep coming after it
        stop.set()
        streaming.join()
        assert copy.returncode == 0, copy.stderr
        assert {Path(line.split("\t")[0]).name for line in copy.stdout.splitlines()} >= {
            "log.sqlite",
            "eventstore.sqlite",
            "views.sqlite",
            "gdpr_master_key",
            "audit_signing_key.pem",
        }
    finally:
        stop.set()
        live.stop()
    assert len(answered) > len(before)  # some events came after the backup began

    restored = Server(tmp_path / "backup")
    restored.start()
    try:
        # The copy's views are those of its log, as a full rebuild from it folds them.
        rebuilt = omni(tmp_path / "backup", "replay", "meters", "--diff")
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        with httpx.Client(timeout=30) as client:

            def send(batch: list[dict[str, object]]) -> dict[str, int]:
                answer = client.post(
                    f"{restored.url}/v1/events", content=orjson.dumps(batch), headers={**key, "Content-Type": BATCH}
                )
                assert answer.status_code == 202, answer.text
                return answer.json()  # type: ignore[no-any-return]

            fresh = events("after-restore", 500)
            assert send(fresh)["accepted"] == len(fresh)  # new events first, at the offsets that follow the copy's log
            for batch in before:  # answered before the backup began: in the copy
                assert send(batch)["duplicates"] == len(batch)
            for batch in answered.values():  # the clients' retries of what came after: each once
                send(batch)
            total = len(fresh) + sum(len(batch) for batch in answered.values())
            deadline = time.monotonic() + 60
            while counted(restored, key) < total and time.monotonic() < deadline:
                time.sleep(0.1)
            assert counted(restored, key) == total
    finally:
        restored.stop()


def test_backup_refuses_a_folder_that_exists_or_a_directory_without_data(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    nothing = omni(tmp_path / "empty", "backup", str(tmp_path / "copy"))
    assert nothing.returncode == 2
    assert "holds no views.sqlite, eventstore.sqlite, log.sqlite" in nothing.stderr
    assert not (tmp_path / "copy").exists()
