"""`python -m ops.bench.compare BASE [--benchmark NAME] [--rounds N] [-- OPTIONS]`: this checkout against BASE, in pairs.

On a shared machine a benchmark's events/s drift by more than most changes move them, within the
hour. So a change is judged in pairs: BASE (any commit, checked out in a temporary git worktree)
and this checkout take turns running the same benchmark with the same OPTIONS, round after round,
and each figure is reported as the median of its per-round ratios (this checkout / BASE), beside
both sides' medians. Each run writes its JSON to a temporary folder, never to results/.

Both sides run with this interpreter and its installed dependencies; each side's own code is
imported from its own tree (`python -m` runs from the tree's root). The services are shared.

Example: `python -m ops.bench.compare HEAD~1 --rounds 3 -- --batch-sizes 100 --raw-runs 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ops.bench.common import ROOT
from ops.bench.run import BENCHMARKS

# The figures worth a ratio: rates, shares of a baseline, latencies, CPU per event, peak memory,
# the share of time an event loop waited for a CPU.
INTERESTING = (
    "per_s",
    "ratio",
    "_ms",
    "p50",
    "p99",
    "cpu_micros_per_event",
    "cpu_micros_per_consume",
    "VmHWM",
    "waiting_for_cpu",
)


def leaves(figures: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Numeric leaves of a report's figures as (dotted path, value); list items by their batch size or index."""
    if isinstance(figures, dict):
        for key, value in figures.items():
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(figures, list):
        for n, item in enumerate(figures):
            label = item.get("batch_size", n) if isinstance(item, dict) else n
            yield from leaves(item, f"{path}[{label}]")
    elif isinstance(figures, int | float) and not isinstance(figures, bool):
        yield path, float(figures)


def interesting(path: str) -> bool:
    return any(word in path for word in INTERESTING) and "runs_per_s" not in path


def run_once(tree: Path, benchmark: str, options: list[str], folder: Path) -> dict[str, float]:
    env = {**os.environ, "BENCH_RESULTS_DIR": str(folder)}
    done = subprocess.run(
        [sys.executable, "-m", f"ops.bench.{benchmark}", *options], cwd=tree, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{benchmark} failed in {tree}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads((folder / f"{benchmark}.json").read_text())
    return {path: value for path, value in leaves(report["figures"]) if interesting(path)}


def compare(base: list[dict[str, float]], ours: list[dict[str, float]]) -> list[tuple[str, float, float, float]]:
    """(figure, BASE's median, ours' median, median of the per-round ratios ours / BASE) for figures both sides have."""
    rows = []
    for path in sorted(set.intersection(*(set(run) for run in base + ours))):
        ratios = [o[path] / b[path] for b, o in zip(base, ours, strict=True) if b[path]]
        if ratios:
            rows.append(
                (
                    path,
                    statistics.median(b[path] for b in base),
                    statistics.median(o[path] for o in ours),
                    statistics.median(ratios),
                )
            )
    return rows


def number(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m ops.bench.compare", description=__doc__.split("\n\n")[1])
    cli.add_argument("base", help="the commit to compare against (e.g. HEAD~1, main)")
    cli.add_argument("--benchmark", default="ingest_kafka", choices=BENCHMARKS)
    cli.add_argument("--rounds", type=int, default=3, help="pairs of runs (default 3)")
    argv = sys.argv[1:] if argv is None else argv
    ours_part, options = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = cli.parse_args(ours_part)
    with tempfile.TemporaryDirectory(prefix="omni-compare-") as scratch:
        tree = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), args.base], cwd=ROOT, check=True)
        try:
            base: list[dict[str, float]] = []
            ours: list[dict[str, float]] = []
            for n in range(args.rounds):
                for side, results, where in (("base", base, tree), ("ours", ours, ROOT)):
                    folder = Path(scratch) / f"{side}-{n}"
                    folder.mkdir()
                    results.append(run_once(where, args.benchmark, options, folder))
                    print(f"round {n + 1}/{args.rounds} {side}: done", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    rows = compare(base, ours)
    width = max((len(path) for path, *_ in rows), default=6)
    print(f"\n{args.benchmark}: this checkout against {args.base}, {args.rounds} pairs (ratio: median of the pairs' ours / base)")
    print(f"{'figure':<{width}}  {'base':>12}  {'ours':>12}  {'ratio':>7}")
    for path, b, o, r in rows:
        print(f"{path:<{width}}  {number(b):>12}  {number(o):>12}  {r:>7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
