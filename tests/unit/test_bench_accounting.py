"""ops.bench.common's accounting of a run: CPU by role, and Redis's AOF rewrites during a phase."""

from __future__ import annotations

import os
import subprocess
import sys

from ops.bench.common import cpu_snapshot, rewrites_between


def test_a_child_that_ended_still_counts_for_its_parent() -> None:
    """Redis's rewrite fork and PostgreSQL's backends end during runs: their CPU must not vanish
    from their role (it did, and Redis's cores read negative across a rewrite that ended)."""
    me = {"bench": os.getpid()}
    before = cpu_snapshot(me)["bench"]
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", busy], check=True)  # waited for: its time is now ours
    after = cpu_snapshot(me)["bench"]
    assert after - before >= 0.25


def test_rewrites_begun_in_a_phase_and_one_under_way_at_its_start() -> None:
    def state(rewrites: int, in_progress: int) -> dict[str, int]:
        return {"keys": 0, "used_memory_bytes": 0, "aof_rewrites": rewrites, "aof_rewrite_in_progress": in_progress}

    assert rewrites_between(state(10, 0), state(10, 0)) == 0
    assert rewrites_between(state(10, 0), state(12, 1)) == 2  # Redis counts a rewrite when it begins
    assert rewrites_between(state(10, 1), state(10, 0)) == 1  # begun before, ran into the phase
    assert rewrites_between(state(10, 1), state(11, 0)) == 2
