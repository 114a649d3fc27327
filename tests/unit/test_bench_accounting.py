"""ops.bench.common's accounting of a run: CPU by role, Redis's AOF rewrites and the broker's
collector pauses during a phase, and how much of a paced tail those pauses explain."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from ops.bench.common import broker_pauses, cpu_snapshot, rewrites_between
from ops.bench.quota_consume import api_side_shape, generator_shape, tail_shape


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


GC_LOG = """\
[2026-12-06T12:46:34.900+0000][32.961s] GC(12) Pause Young (Concurrent Start) (Metadata GC Threshold) 302M->169M(512M) 10.596ms
[2026-12-06T12:46:34.901+0000][32.962s] GC(13) Concurrent Mark Cycle
[2026-12-06T12:46:34.940+0000][33.002s] GC(13) Pause Remark 174M->174M(512M) 7.703ms
[2026-12-06T12:46:34.949+0000][33.011s] GC(13) Concurrent Mark Cycle 49.833ms
[2026-12-06T12:47:16.152+0000][74.213s] GC(17) Pause Young (Normal) (G1 Evacuation Pause) 441M->170M(512M) 14.964ms
"""


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_broker_pauses_are_read_from_its_gc_log_within_the_phase(tmp_path: Path) -> None:
    """Pauses only (a concurrent cycle stops nothing), by when they ended, rotated files included."""
    (tmp_path / "gc.log.0").write_text(GC_LOG)
    (tmp_path / "gc.log").write_text(
        "[2026-12-06T12:47:30.000+0000][88.061s] GC(18) Pause Young (Normal) 440M->171M(512M) 20.000ms\n"
    )
    pauses = broker_pauses(_at("2026-12-06T12:46:30+00:00"), _at("2026-12-06T12:47:20+00:00"), tmp_path)
    assert [round(end - start, 6) for start, end in pauses] == [0.010596, 0.007703, 0.014964]
    assert pauses[-1][1] == _at("2026-12-06T12:47:16.152+00:00")
    assert broker_pauses(0.0, 1.0, tmp_path) == []
    assert broker_pauses(0.0, 2e9, tmp_path / "absent") == []


def test_slow_answers_near_a_pause_are_told_apart() -> None:
    """A slow answer counts as the pause's when its wait overlapped it or the drain after it."""
    pause = (100.0, 100.02)
    timeline = [
        (99.99, 0.040, None),  # waited through the pause
        (100.03, 0.030, None),  # due in the queue it left
        (101.0, 0.050, None),  # slow, a second later: not the pause's
        (100.5, 0.005, None),  # fast: not counted at all
    ]
    shape = tail_shape(timeline, 0.025, [pause])
    assert shape["broker_pauses"] == {"count": 1, "total_ms": 20.0, "max_ms": 20.0}
    assert shape["slow_share_near_broker_pause"] == 2 / 3
    assert tail_shape(timeline, 0.025)["slow_share_near_broker_pause"] == 0.0


def test_the_apis_own_times_are_told_by_the_second_they_were_answered() -> None:
    times = [(100.2, 0.002), (100.9, 0.004), (101.5, 0.050), (102.1, 0.003)]
    shape = api_side_shape(times, first=100.0)
    assert shape["count"] == 4
    assert shape["each_second_99th_percentile"][1] == 50.0  # the slow second stands out
    assert shape["p50_ms"] < 5.0
    assert api_side_shape([], first=100.0) == {}


def test_the_load_generators_own_lateness_is_told_from_the_services_time() -> None:
    """Only a client idle when its request fell due measures the generator's lateness; a slow
    answer counts as the generator's only if it is fast once that lateness is taken out."""
    timeline = [
        (100.0, 0.030, 0.020),  # left 20 ms late, answered 10 ms after: slow only by the generator
        (100.1, 0.040, 0.002),  # left on time, slow all the same: the service's
        (100.2, 0.060, None),  # its client waited on a slow answer: the wait is the service's
        (100.3, 0.004, 0.001),
    ]
    shape = generator_shape(timeline, 0.025)
    assert shape["idle_sends"] == 3
    assert shape["late_max_ms"] == 20.0
    assert shape["slow_answers"] == 3
    assert shape["slow_only_by_lateness"] == 1
    assert shape["p99_less_lateness_ms"] == 60.0  # the behind client keeps all of its 60 ms
    assert generator_shape([(100.0, 0.030, None)], 0.025) == {}
