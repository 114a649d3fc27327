"""One `omni serve` per embedded data directory.

A walkthrough started a second `omni serve` on a data directory another one was serving: both
answered ready, each folded, relayed and cached keys on its own, and a key revoked through one was
still accepted by the other (its key cache hears only its own commands). The second now refuses
to start, naming the first, and the first serves on; a process killed with SIGKILL leaves no lock
behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ADMIN
from tests.e2e.test_crash_restart_embedded import Server


def second_serve(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMNI_DATA_DIR": str(data_dir), "OMNI_ADMIN_KEY": ADMIN, "OMNI_MODE": "embedded"}
    return subprocess.run(
        [sys.executable, "-m", "omni.cli", "serve", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_second_serve_on_the_same_data_directory_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = Server(data_dir)
    first.start()
    try:
        assert first.process is not None
        second = second_serve(data_dir, Server(data_dir).port)
        assert second.returncode == 2, second.stderr
        message = second.stderr.strip()
        assert "another `omni serve`" in message
        assert f"pid {first.process.pid}" in message
        assert str(data_dir.resolve()) in message
        assert "Traceback" not in second.stderr

        # The first one serves on, alone.
        answer = httpx.post(
            f"{first.url}/v1/tenants", json={"name": "acme", "plan": "pro"}, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert answer.status_code == 201, answer.text

        first.kill()  # SIGKILL: the kernel frees the lock with the process
        first.start()
        assert (
            httpx.get(f"{first.url}/v1/tenants", headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"][0]["name"] == "acme"
        )
    finally:
        first.stop()


def test_serve_on_a_read_only_data_directory_says_so_and_exits_2(tmp_path: Path) -> None:
    """It ended in a rich traceback of `sqlite3.OperationalError: unable to open database file`, exit 1."""
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a read-only file system needs mount (root): {mounted.stderr.decode().strip()}")
    try:
        answer = second_serve(mount_point / "data", Server(tmp_path).port)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert answer.returncode == 2, answer.stderr
    assert answer.stderr.strip() == (
        f"omni serve: the data directory {(mount_point / 'data').resolve()} cannot be written: Read-only file system."
    )
