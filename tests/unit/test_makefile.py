"""The Makefile as a newcomer meets it, dry-run only (`make -n`: nothing is started or stopped)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dry_run(*targets: str) -> list[str]:
    done = subprocess.run(["make", "-n", "-C", str(ROOT), *targets], capture_output=True, text=True, check=True, timeout=30)
    return [line for line in done.stdout.splitlines() if not line.startswith("make")]


def test_clean_stops_the_services_before_removing_their_directory() -> None:
    """`make clean` removed .run/ under a running Kafka, PostgreSQL and Redis: they ran on, on deleted
    files, and with their pid files and services.started gone `make services-down` could no longer
    stop them (the README suggests `make clean` for a fresh broker)."""
    commands = dry_run("clean")
    down = next(i for i, c in enumerate(commands) if c.startswith("bash ops/services/down.sh"))
    removal = next(i for i, c in enumerate(commands) if c.startswith("rm -rf") and ".run" in c.split())
    assert down < removal, commands


def test_make_help_describes_every_target() -> None:
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert phony is not None
    shown = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, check=True, timeout=30)
    described = {line.split()[0] for line in shown.stdout.splitlines() if line.strip()}
    assert set(phony.group(1).split()) - {"help"} <= described, shown.stdout
