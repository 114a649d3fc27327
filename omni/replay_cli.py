"""`omni replay`: a replay (streams.replay) from the command line, with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from omni import failpoints
from omni.bootstrap import build_replayer, open_log_and_views
from omni.settings import Mode, Settings
from stores.database import StoreUnavailable
from streams import replay
from streams.log import EventLog, LogUnavailable

# Exit statuses: 0 done (and no difference), 1 differences found, 2 a request that cannot be, or a
# log or views that cannot be read (never 1: a script running --diff reads 1 as "the views differ").
DIFFERENT, BAD = 1, 2


def _counters_told(settings: Settings, log: EventLog) -> Callable[[], Awaitable[None]] | None:
    """How this process tells the API's quota counters that a swap changed the meters' views: in Kafka
    mode their `built` mark dropped in Redis, so the next consume builds them again. (In embedded mode
    the runner of `omni serve` finds it at its fold's next batch.)"""
    if settings.mode is Mode.EMBEDDED:
        return None
    from streams.redis_quotas import views_swapped_elsewhere

    return lambda: views_swapped_elsewhere(settings.redis_url, log.topics)


def parse_until(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as unreadable:
        raise replay.BadReplay(f"`--until` is not an RFC 3339 time: {text!r}") from unreadable
    if moment.tzinfo is None:
        raise replay.BadReplay("`--until` needs a time zone offset (e.g. Z)")
    return moment


async def run_replay(settings: Settings, names: list[str], *, diff: bool, swap: bool, until: str | None, keep: bool) -> int:
    failpoints.arm_from(os.environ)  # tests' crash points (omni.failpoints); none unless OMNI_FAILPOINTS says so
    err = Console(stderr=True)
    if diff and swap:
        err.print("omni replay: choose one of --diff and --swap")
        return BAD
    mode = replay.Mode.SWAP if swap else replay.Mode.DIFF if diff else replay.Mode.BUILD
    try:
        request = replay.Request(tuple(names), mode, parse_until(until), keep)
        request.check(datetime.now(UTC))
    except ValueError as bad:
        err.print(f"omni replay: {bad}")
        return BAD
    if settings.mode is Mode.EMBEDDED and not (settings.data_dir / "log.sqlite").exists():
        # Not created here: an empty log folded would answer "0 rows differ", as if the views were right.
        typer.echo(
            f"omni replay: no log at {(settings.data_dir / 'log.sqlite').resolve()}. Run this where `omni serve` "
            "ran, or set OMNI_DATA_DIR to its data directory.",
            err=True,
        )
        return BAD
    try:
        log, db = open_log_and_views(settings)
    except (StoreUnavailable, LogUnavailable) as away:
        typer.echo(f"omni replay: {away}", err=True)
        return BAD
    try:
        await log.start()
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>10,.0f} events/s"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        ) as bar:
            task = bar.add_task("replay", total=None, rate=0.0)

            def show(progress: replay.Progress) -> None:
                bar.update(task, completed=progress.done, total=progress.total or None, rate=progress.per_second)

            outcome = await build_replayer(settings, db, log, _counters_told(settings, log)).run(request, on_progress=show)
    except (StoreUnavailable, LogUnavailable) as away:
        typer.echo(f"omni replay: {away}", err=True)
        return BAD
    finally:
        await log.close()
        db.close()
    done = outcome.progress
    err.print(f"folded {done.done:,} records in {done.seconds:.2f} s ({done.per_second:,.0f} events/s)")
    for difference in outcome.differences:
        typer.echo(f"{difference.table}\t{difference.side}\t{difference.row!r}")
    if outcome.swapped:
        err.print("swapped: the rebuilt views are live")
    if outcome.kept:
        err.print(f"the rebuilt views are kept in {outcome.kept}")
    if mode is replay.Mode.DIFF:
        err.print(f"{len(outcome.differences)} rows differ from the live views")
        return DIFFERENT if outcome.differences else 0
    return 0
