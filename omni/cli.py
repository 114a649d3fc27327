"""The `omni` command line."""

from __future__ import annotations

import asyncio
import signal

import typer
import uvicorn

from omni import logs
from omni.bootstrap import admin_key, build
from omni.runtime import tune_collector
from omni.settings import Mode, Settings

app = typer.Typer(help="Omni: metering, quotas, billing and compliance on an event log.", no_args_is_help=True)


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the API. In embedded mode the relay and the projection runner run in-process too."""
    settings = Settings()
    logs.configure(settings.log_level)
    from api.app import create_app

    api = create_app(settings, background=True)
    tune_collector(settings.gc_gen0_threshold)
    typer.echo(f"Omni ({settings.mode.value} mode) on http://{host}:{port}  docs: http://{host}:{port}/docs", err=True)
    typer.echo(f"Admin key: {admin_key(settings)}", err=True)
    uvicorn.run(api, host=host, port=port, log_config=None, access_log=False)


@app.command()
def worker() -> None:
    """Run the Faust worker that folds the Kafka topics into views (Kafka mode)."""
    settings = Settings()
    logs.configure(settings.log_level)
    if settings.mode is not Mode.KAFKA:
        raise typer.BadParameter("`omni worker` is for OMNI_MODE=kafka; embedded mode runs its runner inside `omni serve`.")
    from streams.faust_app import run_worker

    run_worker(settings)


@app.command()
def relay() -> None:
    """Publish control-plane events from the event store to the log (Kafka mode)."""
    settings = Settings()
    logs.configure(settings.log_level)

    async def main() -> None:
        platform = build(settings)
        await platform.start(background=False, watch_keys=False)  # it authenticates no one
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await platform.relay.run(stop)
        finally:
            await platform.stop()

    asyncio.run(main())


@app.command("admin-key")
def show_admin_key() -> None:
    """Print the admin key (OMNI_ADMIN_KEY, or the one generated in the data directory)."""
    typer.echo(admin_key(Settings()))


if __name__ == "__main__":
    app()
