"""The `omni` command line."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
import typer
from pydantic import ValidationError

from omni import data_dir, logs
from omni.bootstrap import Platform, admin_key, admin_key_path, build, new_admin_key, stored_admin_key
from omni.data_dir import DataDirLock
from omni.runtime import set_niceness, tune_collector
from omni.settings import Mode, Settings
from stores.shadow import PROJECTIONS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

app = typer.Typer(help="Omni: metering, quotas, billing and compliance on an event log.", no_args_is_help=True)


def load_settings(command: str) -> Settings:
    """The configuration from the environment. A variable it cannot use is named, with the reason, and
    the command exits 2 before it starts or writes anything (not a traceback of pydantic's)."""
    try:
        settings = Settings()
    except ValidationError as bad:
        for error in bad.errors():
            typer.echo(f"omni {command}: {_variable(error['loc'])}: {error['msg']}", err=True)
        raise typer.Exit(2) from bad
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        typer.echo(f"omni {command}: OMNI_DATA_DIR: {settings.data_dir.resolve()} is a file, not a directory", err=True)
        raise typer.Exit(2)
    return settings


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable a setting is read from (OMNI_<FIELD>, or its alias: DATABASE_URL, ...)."""
    name = str(loc[0]) if loc else "?"
    field = Settings.model_fields.get(name)
    if field is None:
        return name  # already the alias
    return field.validation_alias if isinstance(field.validation_alias, str) else f"OMNI_{name.upper()}"


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on")] = 8000,
) -> None:
    """Serve the API. In embedded mode the relay and the projection runner run in-process too."""
    settings = load_settings("serve")
    logs.configure(settings.log_level)
    lock = hold_data_dir(settings)  # before anything is written there
    try:
        set_niceness(settings.cpu_nice)  # before any thread starts: threads take their creator's niceness
        check_master_key(settings)
        check_admin_key(settings)
        from api.app import create_app
        from api.server import serve_app

        new_admin_key = None if stored_admin_key(settings) is not None else admin_key(settings)
        platform = platform_when_reachable(settings)
        check_master_key_opens_data_keys(platform)
        api = create_app(platform=platform, background=True)
        tune_collector(settings.gc_gen0_threshold)
        typer.echo(f"Omni ({settings.mode.value} mode) on http://{host}:{port}  docs: http://{host}:{port}/docs", err=True)
        if settings.mode is Mode.EMBEDDED:
            typer.echo(f"Data: {settings.data_dir.resolve()}", err=True)
        if new_admin_key is not None:
            # Printed once, when generated, never again at later starts (logs are often kept and shared).
            typer.echo(f"Admin key (generated now; `omni admin-key` prints it again): {new_admin_key}", err=True)
        serve_app(api, settings, host=host, port=port)
    finally:  # a refusal (exit 2) leaves the directory free for the next start, in this process too
        if lock is not None:
            lock.release()


def hold_data_dir(settings: Settings) -> DataDirLock | None:
    """Embedded mode: this process takes the data directory for itself (omni.data_dir), or says why
    it cannot (another `omni serve` on it, a directory it cannot write) and exits 2."""
    if settings.mode is not Mode.EMBEDDED:
        return None
    try:
        return data_dir.hold(settings.data_dir)
    except (data_dir.DataDirInUse, data_dir.DataDirUnwritable) as refused:
        typer.echo(f"omni serve: {refused}.", err=True)
        raise typer.Exit(2) from refused


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


def check_admin_key(settings: Settings) -> None:
    """Kafka mode's API processes must all accept the same admin key: none given, each would generate
    one of its own in its own data directory, and an admin's request would be refused by every
    process but one. `omni serve` refuses to start instead (embedded mode, one process, generates
    it)."""
    if settings.mode is Mode.KAFKA and not settings.admin_key:
        typer.echo(
            "omni serve: OMNI_ADMIN_KEY is not set. In Kafka mode every API process must accept the same admin "
            "key: set it to a long random secret (`omni admin-key --new` prints one) and keep it secret.",
            err=True,
        )
        raise typer.Exit(2)


def check_master_key_opens_data_keys(platform: Platform) -> None:
    """The master key must be the one that wrapped the data keys already stored: with another, every
    event about a known person and every GDPR request would answer 503 for good. `omni serve` refuses
    to start instead (exit 2, saying what to set)."""
    problem = platform.personal.master_key_problem()
    if problem is None:
        return
    used = ""
    if platform.settings.mode is Mode.EMBEDDED and not platform.settings.gdpr_master_key:
        used = f" (it is not set: {platform.settings.data_dir / 'gdpr_master_key'} was used)"
    typer.echo(
        f"omni serve: {problem}. Set OMNI_GDPR_MASTER_KEY to the master key that wrapped them{used}; "
        "with another key no event about a known person could be admitted.",
        err=True,
    )
    asyncio.run(platform.stop())
    raise typer.Exit(2)


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
    settings = load_settings("worker")
    kafka_mode_only("worker", settings, "its runner")
    logs.configure(settings.log_level)
    from streams.faust_app import run_worker

    run_worker(settings)


@app.command()
def relay() -> None:
    """Publish control-plane events from the event store to the log (Kafka mode)."""
    settings = load_settings("relay")
    kafka_mode_only("relay", settings, "its outbox relay")
    logs.configure(settings.log_level)
    set_niceness(settings.cpu_nice)  # before any thread starts: threads take their creator's niceness
    from omni.relay_process import run_relay

    run_relay(settings)


def kafka_mode_only(command: str, settings: Settings, what: str) -> None:
    """`omni worker` and `omni relay` are Kafka mode's processes: in embedded mode `omni serve` runs
    them in-process, and another beside it would fold or publish the same data directory twice."""
    if settings.mode is not Mode.KAFKA:
        typer.echo(
            f"omni {command}: `omni {command}` is for OMNI_MODE=kafka; embedded mode runs {what} inside `omni serve`.",
            err=True,
        )
        raise typer.Exit(2)


audit = typer.Typer(help='The tamper-evident audit trail (README, "Audit trail").', no_args_is_help=True)
app.add_typer(audit, name="audit")


@audit.command("verify")
def verify_audit(
    export: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An export of GET /v1/audit/export (JSON Lines)")],
    public_key: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="The PEM of GET /v1/audit/public-key")],
) -> None:
    """Verify an audit export offline: exit 0 when intact, 1 naming the first broken line otherwise."""
    from projections.audit_verify import Broken, verify

    key = _audit_public_key(public_key)
    with export.open("rb") as lines:
        outcome = verify(lines, key)
    if isinstance(outcome, Broken):
        typer.echo(f"{export}:{outcome.line}: {outcome.reason}", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"intact: chain {outcome.chain}, {outcome.entries} entries ending in {outcome.head}, "
        f"{outcome.checkpoints} periodic checkpoints, exported and signed at {outcome.at}"
    )


@audit.command("verify-proof")
def verify_audit_proof(
    proof: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A proof of GET /v1/audit/proof (JSON)")],
    public_key: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="The PEM of GET /v1/audit/public-key")],
) -> None:
    """Verify one entry's inclusion proof offline: exit 0 when it holds, 1 saying why not otherwise."""
    import orjson

    from projections.audit_proof import NotProven, verify_inclusion

    key = _audit_public_key(public_key)
    try:
        body = orjson.loads(proof.read_bytes())
    except orjson.JSONDecodeError as unreadable:
        typer.echo(f"{proof}: not JSON ({unreadable})", err=True)
        raise typer.Exit(1) from unreadable
    outcome = verify_inclusion(body, key) if isinstance(body, dict) else NotProven("not a JSON object")
    if isinstance(outcome, NotProven):
        typer.echo(f"{proof}: {outcome.reason}", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"included: entry {outcome.seq} of chain {outcome.chain}, in the signed tree of {outcome.tree_size} entries {outcome.root}"
    )


@audit.command("verify-consistency")
def verify_audit_consistency(
    proof: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A proof of GET /v1/audit/consistency (JSON)")],
    kept: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="The checkpoint you kept (JSON, e.g. an export's last line)")
    ],
    public_key: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="The PEM of GET /v1/audit/public-key")],
) -> None:
    """Verify offline that a checkpoint you kept commits to a prefix of a later one: exit 0 when the
    chain only grew, 1 saying why not otherwise."""
    import orjson

    from projections.audit_proof import NotProven, verify_consistency

    key = _audit_public_key(public_key)
    bodies = []
    for path in (kept, proof):
        try:
            bodies.append(orjson.loads(path.read_bytes()))
        except orjson.JSONDecodeError as unreadable:
            typer.echo(f"{path}: not JSON ({unreadable})", err=True)
            raise typer.Exit(1) from unreadable
    kept_body, proof_body = bodies
    if not isinstance(kept_body, dict) or not isinstance(proof_body, dict):
        outcome: object = NotProven("the kept checkpoint and the proof must be JSON objects")
    else:
        outcome = verify_consistency(kept_body, proof_body, key)
    if isinstance(outcome, NotProven):
        typer.echo(f"{proof}: {outcome.reason}", err=True)
        raise typer.Exit(1)
    typer.echo(f"consistent: the chain grew from the {kept_body['length']} entries you kept to {proof_body['second']['length']}")


def _audit_public_key(public_key: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(public_key.read_bytes())
    except ValueError as unreadable:
        typer.echo(f"{public_key}: not a PEM public key ({unreadable})", err=True)
        raise typer.Exit(2) from unreadable
    if not isinstance(key, Ed25519PublicKey):
        typer.echo(f"{public_key}: an {type(key).__name__}, not an Ed25519 public key", err=True)
        raise typer.Exit(2)
    return key


slo = typer.Typer(help='SLOs (README, "SLOs").', no_args_is_help=True)
app.add_typer(slo, name="slo")


@slo.command("rules")
def slo_rules(
    out: Annotated[Path, typer.Option(dir_okay=False, help="Where to write the rule file")] = Path(
        "ops/prometheus/slos.rules.yml"
    ),
    definitions: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help='A JSON list of {"owner", "name", "definition"} (as GET /v1/slos lists them); without it, '
            "the SLOs the configured deployment's views hold",
        ),
    ] = None,
) -> None:
    """Write Prometheus recording and alerting rules for the SLOs, as Sloth does (multi-window multi-burn-rate)."""
    import yaml

    from projections.slo_rules import rules_document

    specs = _listed_slos(definitions) if definitions is not None else _stored_slos(load_settings("slo rules"))
    document = rules_document(specs)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by `omni slo rules` from the SLO definitions: do not edit by hand.\n"
    out.write_text(header + yaml.dump(document, Dumper=_block_dumper(), sort_keys=False, width=200))
    typer.echo(f"{out}: {len(specs)} SLOs, {len(document['groups'])} rule groups", err=True)


def _block_text(dumper: Any, text: str) -> Any:
    """Multi-line PromQL as a literal block, as people write rule files."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


def _block_dumper() -> Any:
    import yaml

    class BlockDumper(yaml.SafeDumper):
        pass

    BlockDumper.add_representer(str, _block_text)
    return BlockDumper


def _listed_slos(definitions: Path) -> list[Any]:
    """The SLOs of a JSON list of {"owner", "name", "definition"}; what is wrong with it is named, exit 2."""
    import orjson

    from projections.slo_rules import SloSpec
    from schemas.slos import SloBody

    def refuse(reason: str) -> typer.Exit:
        typer.echo(f"omni slo rules: {definitions}: {reason}", err=True)
        return typer.Exit(2)

    try:
        listed = orjson.loads(definitions.read_bytes())
    except orjson.JSONDecodeError as unreadable:
        raise refuse(f"not JSON ({unreadable})") from unreadable
    if not isinstance(listed, list):
        raise refuse('not a JSON list of {"owner", "name", "definition"}')
    specs = []
    for n, item in enumerate(listed):
        if not isinstance(item, dict) or not {"owner", "name", "definition"} <= item.keys():
            raise refuse(f"item {n}: needs owner, name and definition")
        try:
            body = SloBody.model_validate(item["definition"])
        except ValidationError as invalid:
            first = invalid.errors()[0]
            where = ".".join(str(part) for part in ("definition", *first["loc"]))
            raise refuse(f"item {n} ({item['owner']}/{item['name']}): {where}: {first['msg']}") from invalid
        specs.append(SloSpec(item["owner"], item["name"], body))
    return specs


def _stored_slos(settings: Settings) -> list[Any]:
    from projections.slo_rules import SloSpec
    from stores import slos as slo_store
    from stores.database import Database, PostgresDatabase, SqliteDatabase, StoreUnavailable

    db: Database
    try:
        if settings.mode is Mode.EMBEDDED:
            views = settings.data_dir / "views.sqlite"
            if not views.exists():  # not created here: an empty database has no SLOs, nor their table
                typer.echo(
                    f"omni slo rules: no views at {views.resolve()}. Run this where `omni serve` ran, set OMNI_DATA_DIR "
                    "to its data directory, or give the SLOs with --definitions.",
                    err=True,
                )
                raise typer.Exit(2)
            db = SqliteDatabase(views)
        else:
            db = PostgresDatabase(settings.database_url, schema=settings.database_schema)
        try:
            with db.transaction() as tx:
                rows = slo_store.definitions(tx)
        finally:
            db.close()
    except StoreUnavailable as away:
        typer.echo(f"omni slo rules: {away}", err=True)
        raise typer.Exit(2) from away
    except psycopg.errors.UndefinedTable as missing:
        typer.echo(
            f'omni slo rules: no views in PostgreSQL schema "{settings.database_schema}" (OMNI_DATABASE_SCHEMA): '
            f"{str(missing).splitlines()[0]} (views of an earlier version of Omni: start `omni serve` once to migrate them)",
            err=True,
        )
        raise typer.Exit(2) from missing
    except sqlite3.OperationalError as missing:  # views of an earlier version, not migrated yet
        typer.echo(f"omni slo rules: {missing}: start `omni serve` once to migrate the views.", err=True)
        raise typer.Exit(2) from missing
    return [SloSpec(r.owner, r.name, r.definition) for r in rows]


@app.command()
def replay(
    projections: Annotated[
        list[str] | None, typer.Argument(help=f"Projections to rebuild ({' '.join(PROJECTIONS)}; none: all)")
    ] = None,
    diff: Annotated[
        bool, typer.Option("--diff", help="Report every row that differs from the live views (exit 1 if any)")
    ] = False,
    swap: Annotated[bool, typer.Option("--swap", help="Make the rebuilt views live, atomically")] = False,
    until: Annotated[
        str | None, typer.Option(help="Only what the log held at this moment (RFC 3339): the point-in-time views")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the shadow store afterwards, and say where")] = False,
) -> None:
    """Rebuild projections from the start of the log into a shadow store; then diff or swap (README, "Replay")."""
    import asyncio

    from omni.replay_cli import run_replay

    settings = load_settings("replay")
    logs.configure(settings.log_level)
    tune_collector(settings.gc_gen0_threshold)  # a rebuild allocates as `omni serve` does, in bulk
    raise typer.Exit(asyncio.run(run_replay(settings, projections or [], diff=diff, swap=swap, until=until, keep=keep)))


@app.command()
def backup(
    destination: Annotated[Path, typer.Argument(help="A new folder for the copy (it must not exist)")],
) -> None:
    """Copy the embedded data directory as it stands at one instant, while `omni serve` runs (README, "Backups")."""
    from omni.backup import BackupFailed
    from omni.backup import backup as copy_data_dir

    settings = load_settings("backup")
    if settings.mode is not Mode.EMBEDDED:
        typer.echo(
            "omni backup: `omni backup` copies embedded mode's data directory; in Kafka mode back up PostgreSQL "
            '(pg_dump) and keep the topics, whose retention is disabled (README, "Backups").',
            err=True,
        )
        raise typer.Exit(2)
    try:
        copied = copy_data_dir(settings.data_dir, destination)
    except BackupFailed as failed:
        typer.echo(f"omni backup: {failed}", err=True)
        raise typer.Exit(2) from failed
    for name, size in copied.files.items():
        typer.echo(f"{copied.destination / name}\t{size}")
    kept_outside = [
        variable
        for variable, value in (
            ("OMNI_ADMIN_KEY", settings.admin_key),
            ("OMNI_GDPR_MASTER_KEY", settings.gdpr_master_key),
            ("OMNI_AUDIT_SIGNING_KEY", settings.audit_signing_key),
        )
        if value
    ]
    if kept_outside:
        typer.echo(f"omni backup: {', '.join(kept_outside)} set: keep each with the copy, which does not hold it", err=True)


@app.command("gdpr-master-key")
def new_master_key() -> None:
    """Print a new GDPR master key (32 random bytes in base64) for OMNI_GDPR_MASTER_KEY."""
    from omni.personal_data import generate_master_key

    typer.echo(generate_master_key())


@app.command("admin-key")
def show_admin_key(
    new: Annotated[
        bool, typer.Option("--new", help="Print a new random admin key (for OMNI_ADMIN_KEY) and store nothing")
    ] = False,
) -> None:
    """Print the admin key (OMNI_ADMIN_KEY, or the one `omni serve` generated in the data directory)."""
    if new:
        typer.echo(new_admin_key())
        return
    settings = load_settings("admin-key")
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
