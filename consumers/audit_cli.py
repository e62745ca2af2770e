"""`keel audit …`: verify the log and the projection, write signed checkpoints, create the checkpoint key.

Registered by the composition root (deploy/cli.py). Exit codes: 0 verified, 1 findings, 2 unusable input
or configuration. `verify` runs as the schema owner (it replays into a shadow schema it creates and drops).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from consumers.audit import AuditReport, trusted_checkpoint_keys, verify
from consumers.projector import migration_registry
from keel.errors import ConfigurationError, KeelError
from keel.settings import Settings, get_settings
from projections.checkpoints import CheckpointKey, SignedCheckpoint
from projections.checkpoints_pg_adapter import PgCheckpoints
from projections.pg_adapter import Pool, connect_pool
from schemas.catalog import default_catalog
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["audit_app"]

T = TypeVar("T")
console = Console()
audit_app = typer.Typer(
    help="Tamper evidence: verify the log and the projection, signed checkpoints.", no_args_is_help=True
)


def _run(work: Callable[[Settings, Pool], Awaitable[T]]) -> T:
    settings = get_settings()

    async def main() -> T:
        pool = await connect_pool(settings.database_url, max_size=4)
        try:
            return await work(settings, pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(main())
    except KeelError as error:
        console.print(f"[red]{type(error).__name__}:[/red] {error}")
        raise typer.Exit(2) from error


@audit_app.command("verify")
def verify_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: every tenant)")] = None,
    keep_shadow: Annotated[bool, typer.Option(help="Keep the replayed shadow schema for inspection")] = False,
    trusted_key: Annotated[
        list[Path] | None, typer.Option(help="A retired checkpoint key (PEM, public is enough); repeatable")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Replay the log and compare it with the signed checkpoints and PostgreSQL; exit 1 on any finding."""

    async def work(settings: Settings, pool: Pool) -> AuditReport:
        registry = ConfluentSchemaRegistry(settings.registry_url)
        try:
            return await verify(
                settings,
                pool,
                registry,
                migration_registry(settings),
                tenant_id=tenant,
                trusted_keys=trusted_checkpoint_keys(settings, trusted_key or ()),
                keep_shadow=keep_shadow,
            )
        finally:
            await registry.close()

    report = _run(work)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        if report.findings:
            table = Table("kind", "subject", "finding")
            for finding in report.findings:
                table.add_row(finding.kind, finding.subject, finding.message)
            console.print(table)
        unchecked = (
            f"; {report.checkpoints_unchecked} checkpoints NOT checked (no KEEL_AUDIT_CHECKPOINT_KEY_FILE)"
            if report.checkpoints_unchecked
            else ""
        )
        verdict = "[green]verified[/green]" if report.is_verified else f"[red]{len(report.findings)} findings[/red]"
        console.print(
            f"{verdict}: replayed {report.records_replayed} records ({report.dead_letters} refused), compared "
            f"{report.rows_compared} rows and {report.devices_compared} chain heads, checked "
            f"{report.checkpoints_verified} checkpoints{unchecked} in {report.seconds:.1f}s"
        )
    if not report.is_verified:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def checkpoint_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: every tenant)")] = None,
) -> None:
    """Sign and store a checkpoint now (the projector also writes them every KEEL_AUDIT_CHECKPOINT_INTERVAL_S)."""

    async def work(settings: Settings, pool: Pool) -> list[SignedCheckpoint]:
        path = settings.audit_checkpoint_key_file
        if path is None:
            raise ConfigurationError("set KEEL_AUDIT_CHECKPOINT_KEY_FILE (create one with `keel audit keygen`)")
        key = CheckpointKey.from_pem_file(path)
        checkpoints = PgCheckpoints(pool, settings.pg_schema, default_catalog().entities())
        if tenant is not None:
            return [await checkpoints.write(key, tenant, settings.consumer_group)]
        return await checkpoints.write_all(key, settings.consumer_group)

    for checkpoint in _run(work):
        body = checkpoint.body
        console.print(
            f"checkpoint #{checkpoint.checkpoint_id} {body.tenant_id}: {len(body.heads)} chain heads, "
            f"{len(body.digests)} digests, key {checkpoint.key_id}"
        )


@audit_app.command("keygen")
def keygen_command(
    path: Annotated[Path, typer.Argument(help="Where to write the new key (0600; must not exist)")],
) -> None:
    """Create a checkpoint signing key (Ed25519 PEM); keep a copy of it away from the database."""
    try:
        key = CheckpointKey.write_new(path)
    except KeelError as error:
        console.print(f"[red]{type(error).__name__}:[/red] {error}")
        raise typer.Exit(2) from error
    console.print(f"wrote {path} (key id {key.key_id})")
