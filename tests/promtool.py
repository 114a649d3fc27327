"""promtool, from Debian's `prometheus` package as ops/services/promtool.sh unpacks it (`make tools`)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def promtool() -> str:
    found = subprocess.run(["bash", str(ROOT / "ops/services/promtool.sh")], capture_output=True, text=True, check=False)
    assert found.returncode == 0, f"promtool is missing and ops/services/promtool.sh could not fetch it:\n{found.stderr}"
    return found.stdout.strip()


def check_metrics(exposition: str) -> None:
    """`promtool check metrics`: the exposition parses and passes Prometheus's naming lint."""
    checked = subprocess.run([promtool(), "check", "metrics"], input=exposition, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, f"promtool check metrics:\n{checked.stdout}{checked.stderr}"
