"""ops.bench.common's scheduler figures: a thread's time running and waiting for a CPU, as shares."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ops.bench.common import schedule_shares, thread_schedule


def test_shares_of_the_wall_time() -> None:
    shares = schedule_shares((1.0, 0.5), (1.6, 0.7), 1.0)
    assert shares == {"running": 0.6, "waiting_for_cpu": 0.2, "idle": 0.2}


def test_no_figures_where_the_kernel_keeps_none() -> None:
    assert schedule_shares(None, (1.0, 0.0), 1.0) == {}
    assert schedule_shares((1.0, 0.0), (1.0, 0.0), 0.0) == {}
    assert thread_schedule(2**22 + 12345) is None  # no such process


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat").exists(), reason="no schedstat here")
def test_a_busy_thread_counts_as_running() -> None:
    before, began = thread_schedule(os.getpid()), time.monotonic()
    while time.monotonic() - began < 0.2:
        pass  # busy: the thread runs or waits for a CPU, never idles
    after = thread_schedule(os.getpid())
    assert before is not None and after is not None
    shares = schedule_shares(before, after, time.monotonic() - began)
    # How much of it ran depends on what else wanted the CPUs (11 % was seen under a loaded suite);
    # that it ran, and was never without work (running or waiting its turn), does not.
    assert shares["running"] > 0
    assert shares["idle"] < 0.1
