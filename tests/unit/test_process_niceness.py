"""OMNI_CPU_NICE: a process gives every thread of its own the niceness it is set to, those running
already and those started later, and one not allowed to raise its priority says so and runs on.
Each case runs in a subprocess of its own, so this test process keeps its niceness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from omni.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_every_thread_takes_the_niceness_those_running_and_those_started_after() -> None:
    done = run(
        """
        import json, os, threading
        from omni.runtime import set_niceness

        stop = threading.Event()
        before = threading.Thread(target=stop.wait)
        before.start()
        set_niceness(7)
        after = threading.Thread(target=stop.wait)
        after.start()
        niceness = {tid: os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir("/proc/self/task")}
        stop.set()
        print(json.dumps({"threads": len(niceness), "niceness": sorted(set(niceness.values()))}))
        """
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {"threads": 3, "niceness": [7]}


def test_none_leaves_the_process_as_it_was_started() -> None:
    done = run(
        """
        import os
        from omni.runtime import set_niceness

        os.nice(3)
        set_niceness(None)
        print(os.getpriority(os.PRIO_PROCESS, 0))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_a_process_not_allowed_to_raise_its_priority_says_so_and_runs_as_started() -> None:
    done = run(
        """
        import logging, os
        from omni.runtime import set_niceness

        logging.basicConfig(level=logging.WARNING)
        os.nice(5)
        if os.geteuid() == 0:  # root may raise it: drop to an unprivileged user, as a deployment would run
            os.setgid(65534)
            os.setuid(65534)
        set_niceness(-5)
        print(os.getpriority(os.PRIO_PROCESS, 0))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5", "runs as started"
    assert "could not set this process's CPU niceness to -5" in done.stderr
    assert "CAP_SYS_NICE" in done.stderr and "running at 5" in done.stderr


@pytest.mark.parametrize("value", ["-21", "20", "low"])
def test_a_niceness_outside_minus_20_to_19_is_refused_at_start(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_CPU_NICE", value)
    with pytest.raises(ValidationError):
        Settings()


def test_the_setting_is_read_per_process_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().cpu_nice is None
    monkeypatch.setenv("OMNI_CPU_NICE", "-10")
    assert Settings().cpu_nice == -10
