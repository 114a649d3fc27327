"""Where the time goes: a summary of the py-spy profiles that `--profile` writes to results/profiles/.

`python -m ops.bench.profile results/profiles/kafka-api.txt [--top 30] [--module omni]`
prints, per function, the share of busy samples (idle waits left out; waiting for a
database reply counts as busy, under `Connection.wait`) spent in it (inclusive) and in it alone (self).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
RATE = 97  # samples per second per thread (common.Spy)
# Leaf frames of a thread that waits for work: py-spy cannot always tell these from busy ones.
IDLE = {
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "EpollSelector.select (selectors.py)",
    "_worker (concurrent/futures/thread.py)",  # an idle thread-pool thread, blocked on its queue
    "Runner.run (asyncio/runners.py)",  # uvloop's C loop waiting for I/O
    "Queue.get (queue.py)",
    "Queue.get (psycopg_pool/_acompat.py)",
}


def frames(stack: str) -> list[str]:
    """`thread (1): Name;f (file.py:12);g (x.py:3)` -> ['f (file.py)', 'g (x.py)'], lines dropped to group by function."""
    return [_LINE.sub(")", frame) for frame in stack.split(";")[1:]]


def summarize(path: Path, top: int = 30, only: str = "") -> str:
    inclusive: Counter[str] = Counter()
    alone: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        if not frames(stack) or frames(stack)[-1] in IDLE:
            idle += samples
            continue
        total += samples
        threads[stack.split(";")[0].split(": ", 1)[-1].split(" (")[0]] += samples
        found = frames(stack)
        for frame in set(found):
            inclusive[frame] += samples
        if found:
            alone[found[-1]] += samples
    if not total:
        return f"{path}: no samples"
    pick = lambda counter: [(f, n) for f, n in counter.most_common() if only in f][:top]  # noqa: E731
    out = [f"{path.name}: {total} busy samples ({total / RATE:.1f} thread-seconds; {idle / RATE:.1f} more idle)"]
    out += ["threads: " + ", ".join(f"{name} {n / total:.0%}" for name, n in threads.most_common(6))]
    out += ["", "inclusive  function"] + [f"{n / total:8.1%}   {f}" for f, n in pick(inclusive)]
    out += ["", "self       function"] + [f"{n / total:8.1%}   {f}" for f, n in pick(alone)]
    return "\n".join(out)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("paths", nargs="+", type=Path)
    cli.add_argument("--top", type=int, default=30)
    cli.add_argument("--only", default="", help="only functions whose frame contains this text (a file or module name)")
    args = cli.parse_args()
    print("\n\n".join(summarize(p, args.top, args.only) for p in args.paths))
