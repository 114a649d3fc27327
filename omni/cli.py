"""The `omni` command line."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import psycopg
import typer

from omni import logs
from omni.bootstrap import Platform, admin_key, admin_key_path, build, stored_admin_key
from omni.runtime import tune_collector
from omni.settings import Mode, Settings

log = logging.getLogger(__name__)

app = typer.Typer(help="Omni: metering, quotas, billing and compliance on an event log.", no_args_is_help=True)


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the API. In embedded mode the relay and the projection runner run in-process too."""
    settings = Settings()
    logs.configure(settings.log_level)
    check_master_key(settings)
    from api.app import create_app
    from api.server import serve_app

    new_admin_key = None if stored_admin_key(settings) is not None else admin_key(settings)
    api = create_app(platform=platform_when_reachable(settings), background=True)
    tune_collector(settings.gc_gen0_threshold)
    typer.echo(f"Omni ({settings.mode.value} mode) on http://{host}:{port}  docs: http://{host}:{port}/docs", err=True)
    if settings.mode is Mode.EMBEDDED:
        typer.echo(f"Data: {settings.data_dir.resolve()}", err=True)
    if new_admin_key is not None:
        # Printed once, when generated, never again at later starts (logs are often kept and shared).
        typer.echo(f"Admin key (generated now; `omni admin-key` prints it again): {new_admin_key}", err=True)
    serve_app(api, settings, host=host, port=port)


def check_master_key(settings: Settings) -> None:
    """Kafka mode's API processes seal personal data with the master key they all share: none given,
    `omni serve` refuses to start (embedded mode generates one into its data directory)."""
    if settings.mode is Mode.KAFKA and not settings.gdpr_master_key:
        typer.echo(
            "omni serve: OMNI_GDPR_MASTER_KEY is not set. In Kafka mode every API process must seal personal data "
            "with the same master key (32 bytes in base64; `omni gdpr-master-key` prints a new one). Keep it secret, "
            "and never lose it: without it no personal data can be read again.",
            err=True,
        )
        raise typer.Exit(2)
    if settings.gdpr_master_key:
        from omni.personal_data import MasterKey

        try:
            MasterKey.from_text(settings.gdpr_master_key)
        except ValueError as bad:
            typer.echo(f"omni serve: {bad}", err=True)
            raise typer.Exit(2) from bad


def platform_when_reachable(settings: Settings) -> Platform:
    """build(settings), waiting (with backoff, one warning per attempt) while PostgreSQL is away in
    Kafka mode: the API then does not listen yet, which load balancers and probes read as not ready.
    Kafka may be away too: the log connects lazily and /readyz tells."""
    delay = 0.5
    while True:
        try:
            if settings.mode is Mode.KAFKA:
                # A plain connection first: a build that fails halfway would leave a pool behind.
                psycopg.connect(settings.database_url, connect_timeout=5).close()
            return build(settings)
        except psycopg.OperationalError as away:
            log.warning("omni serve cannot reach PostgreSQL (%s); retrying in %.1fs", str(away).strip(), delay)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


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
    from omni.relay_process import run_relay

    run_relay(settings)


audit = typer.Typer(help='The tamper-evident audit trail (README, "Audit trail").', no_args_is_help=True)
app.add_typer(audit, name="audit")


@audit.command("verify")
def verify_audit(
    export: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An export of GET /v1/audit/export (JSON Lines)")],
    public_key: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="The PEM of GET /v1/audit/public-key")],
) -> None:
    """Verify an audit export offline: exit 0 when intact, 1 naming the first broken line otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from projections.audit_verify import Broken, verify

    try:
        key = load_pem_public_key(public_key.read_bytes())
    except ValueError as unreadable:
        typer.echo(f"{public_key}: not a PEM public key ({unreadable})", err=True)
        raise typer.Exit(2) from unreadable
    if not isinstance(key, Ed25519PublicKey):
        typer.echo(f"{public_key}: an {type(key).__name__}, not an Ed25519 public key", err=True)
        raise typer.Exit(2)
    with export.open("rb") as lines:
        outcome = verify(lines, key)
    if isinstance(outcome, Broken):
        typer.echo(f"{export}:{outcome.line}: {outcome.reason}", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"intact: chain {outcome.chain}, {outcome.entries} entries ending in {outcome.head}, "
        f"{outcome.checkpoints} periodic checkpoints, exported and signed at {outcome.at}"
    )


@app.command("gdpr-master-key")
def new_master_key() -> None:
    """Print a new GDPR master key (32 random bytes in base64) for OMNI_GDPR_MASTER_KEY."""
    from omni.personal_data import generate_master_key

    typer.echo(generate_master_key())


@app.command("admin-key")
def show_admin_key() -> None:
    """Print the admin key (OMNI_ADMIN_KEY, or the one `omni serve` generated in the data directory)."""
    settings = Settings()
    key = stored_admin_key(settings)
    if key is None:
        typer.echo(
            f"No admin key: OMNI_ADMIN_KEY is not set and {admin_key_path(settings).resolve()} does not exist. "
            "Run this where `omni serve` ran, or set OMNI_DATA_DIR to its data directory.",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(key)


if __name__ == "__main__":
    app()
