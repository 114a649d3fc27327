"""Embedded mode's readiness asks whether the data directory has room, not only whether its files
answer. A walkthrough filled the disk under a running `omni serve`: every ingest and command answered
503 while /readyz answered 200, so nothing that watches readiness heard of it before the clients did.
(`tests/e2e/test_data_dir_full.py` fills a real small file system; here the floor is moved instead.)"""

from __future__ import annotations

import shutil
from pathlib import Path

from prometheus_client import REGISTRY

from tests.e2e.conftest import embedded_settings, served


async def test_readyz_is_503_while_the_data_directory_has_less_room_than_the_floor(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    async with served(embedded_settings(tmp_path, min_free_disk_mb=free_mb + 1024)) as omni:
        answer = await omni.client.get("/readyz")
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    checks = answer.json()["checks"]
    assert checks["disk"].startswith("unavailable: LowOnDisk: "), checks
    assert "OMNI_MIN_FREE_DISK_MB" in checks["disk"]
    assert {name: state for name, state in checks.items() if name != "disk"} == {"log": "ok", "event_store": "ok", "views": "ok"}


async def test_readyz_is_200_with_room_and_the_room_is_exported(tmp_path: Path) -> None:
    async with served(embedded_settings(tmp_path, min_free_disk_mb=1)) as omni:
        answer = await omni.client.get("/readyz")
        exported = REGISTRY.get_sample_value("omni_data_dir_free_bytes")
    assert answer.status_code == 200, answer.text
    assert answer.json()["checks"]["disk"] == "ok"
    assert exported is not None and exported > 2**20
    assert abs(exported - shutil.disk_usage(tmp_path).free) < 256 * 2**20  # the same file system, read at the scrape


async def test_a_floor_of_zero_checks_nothing(tmp_path: Path) -> None:
    async with served(embedded_settings(tmp_path, min_free_disk_mb=0)) as omni:
        answer = await omni.client.get("/readyz")
    assert answer.status_code == 200, answer.text
    assert "disk" not in answer.json()["checks"]
