"""`python -m ops.bench.run [names...] [--<name>-<option> VALUE ...] [--profile]`: run benchmarks, print, save JSON.

Each benchmark is a module here with `NAME`, an `Options` dataclass and `async run(options) -> Report`.
Options also come from the environment: BENCH_<NAME>_<OPTION> (e.g. BENCH_QUERY_LATENCY_EVENTS=10000000).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import time
import traceback
from types import ModuleType

from ops.bench.common import add_options, machine, options_from

BENCHMARKS = (
    "ingest_kafka",
    "freshness",
    "ingest_embedded",
    "query_latency",
    "replay",
    "quota_consume",
    "close_period",
    "gdpr_ingest",
    "meter_watch",
)


def module(name: str) -> ModuleType:
    return importlib.import_module(f"ops.bench.{name}")


def parser(names: tuple[str, ...], *, prefixed: bool) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m ops.bench.run" if prefixed else f"python -m ops.bench.{names[0]}")
    if prefixed:
        cli.add_argument("names", nargs="*", metavar="name", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    cli.add_argument("--profile", action="store_true", help="run services under py-spy (results/profiles/); env BENCH_PROFILE=1")
    cli.add_argument("--trace-worker", action="store_true", help="log the Faust worker's batches (env BENCH_TRACE_WORKER=1)")
    for name in names:
        add_options(cli, name, module(name).Options, prefixed=prefixed)
    return cli


def main(argv: list[str] | None = None, *, only: str | None = None) -> int:
    names = (only,) if only else BENCHMARKS
    args = parser(names, prefixed=only is None).parse_args(argv)
    if args.profile:
        os.environ["BENCH_PROFILE"] = "1"
    if args.trace_worker:
        os.environ["BENCH_TRACE_WORKER"] = "1"
    chosen = [only] if only else (args.names or list(BENCHMARKS))
    if unknown := set(chosen) - set(BENCHMARKS):
        print(f"unknown benchmarks: {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        bench = module(name)
        facts = machine()
        started = time.monotonic()
        print(
            f"== {name} ({', '.join(f'{k}={v}' for k, v in vars(options_from(args, name, bench.Options)).items())})", flush=True
        )
        try:
            report = asyncio.run(bench.run(options_from(args, name, bench.Options)))
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        facts["seconds"] = round(time.monotonic() - started, 1)
        path = report.save(facts)
        print(report.text(), f"\n-> {path.relative_to(os.getcwd()) if path.is_relative_to(os.getcwd()) else path}\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
