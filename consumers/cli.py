"""Commands of the projector side: `keel run projector`, `keel projections …`, `keel conflicts …`.

Registered by the composition root (deploy/cli.py). Every command exits 0 on success, 1 when a check fails
(digests differ), 2 on unusable input or configuration.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from consumers.projector import migration_registry, serve_projector
from consumers.rebuild import RebuildReport, rebuild
from keel.errors import KeelError
from keel.kafka_adapter import AioKafkaLogWriter
from keel.settings import Settings, get_settings
from projections.decisions import describe
from projections.outbox_pg_adapter import PgOutbox
from projections.overrides import Keep, OverrideRequest, resolve_decision
from projections.pg_adapter import Pool, connect_pool
from projections.pg_admin_adapter import PgAdmin, PgOperatorSequence
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrator_adapter import migrate
from schemas.catalog import default_catalog
from schemas.event_encoder import EventEncoder
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["conflicts_app", "projections_app", "run_projector"]

T = TypeVar("T")
console = Console()
projections_app = typer.Typer(
    help="Projections: migrate, digest, rebuild, swap, snapshot, compact.", no_args_is_help=True
)
conflicts_app = typer.Typer(help="Conflict decisions: list, show, resolve by an override event.", no_args_is_help=True)


class KeepSide(enum.StrEnum):
    """The side of a decision an override keeps."""

    WINNER = "winner"
    LOSER = "loser"


Entities = Annotated[list[str] | None, typer.Option("--entity", "-e", help="Entity type (repeatable); default all")]


def _run(work: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    """Run an async command; Keel errors become a message and exit code 2."""
    settings = get_settings()
    try:
        return asyncio.run(work(settings))
    except KeelError as error:
        console.print(f"[red]{type(error).__name__}:[/red] {error}")
        raise typer.Exit(2) from error


async def _with_pool(settings: Settings, work: Callable[[Pool], Awaitable[T]]) -> T:
    pool = await connect_pool(settings.database_url, max_size=2)
    try:
        return await work(pool)
    finally:
        await pool.close()


def _entities(chosen: list[str] | None) -> list[str]:
    known = default_catalog().entities()
    unknown = sorted(set(chosen or ()) - set(known))
    if unknown:
        console.print(f"[red]unknown entity types:[/red] {', '.join(unknown)} (known: {', '.join(known)})")
        raise typer.Exit(2)
    return list(chosen or known)


def run_projector() -> None:
    """Project change topics into PostgreSQL until SIGTERM/SIGINT (health: settings.projector_health_port)."""
    asyncio.run(serve_projector(get_settings()))


@projections_app.command("migrate")
def migrate_command(schema: Annotated[str | None, typer.Option(help="Schema (default KEEL_PG_SCHEMA)")] = None) -> None:
    """Apply the projector's pending SQL migrations."""

    async def work(settings: Settings) -> list[str]:
        return await _with_pool(settings, lambda pool: migrate(pool, schema or settings.pg_schema))

    applied = _run(work)
    console.print(f"applied: {', '.join(applied) if applied else 'nothing (up to date)'}")


@projections_app.command("digest")
def digest_command(
    entity: Entities = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant")] = None,
    schema: Annotated[str | None, typer.Option(help="Schema (default KEEL_PG_SCHEMA)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Canonical digest per entity table and tenant (visible rows in payload form)."""
    entities = _entities(entity)

    async def work(settings: Settings) -> list[Any]:
        return await _with_pool(
            settings, lambda pool: PgAdmin(pool).digests(schema or settings.pg_schema, entities, tenant_id=tenant)
        )

    digests = _run(work)
    if as_json:
        typer.echo(json.dumps([d.__dict__ for d in digests], indent=2))
        return
    table = Table("entity", "tenant", "live entities", "digest")
    for d in digests:
        table.add_row(d.entity_type, d.tenant_id, str(d.count), d.digest)
    console.print(table)


def _print_rebuild(report: RebuildReport) -> None:
    table = Table("entity", "tenant", "live", "shadow", "equal")
    for c in report.comparisons:
        live = f"{c.live[0]} {c.live[1][:16]}" if c.live else "-"
        shadow = f"{c.shadow[0]} {c.shadow[1][:16]}" if c.shadow else "-"
        table.add_row(c.entity_type, c.tenant_id, live, shadow, "yes" if c.is_equal else "[red]NO[/red]")
    console.print(table)
    console.print(
        f"replayed {report.applied} events into {report.shadow_schema} in {report.seconds:.1f}s "
        f"(dead letters met: {report.dead_letters_seen}); digests {'match' if report.matches else 'DIFFER'}"
    )
    if report.swapped:
        console.print(f"swapped into {report.live_schema}; previous tables kept in {report.archive_schema}")
    else:
        console.print(f"not swapped; to swap later: keel projections swap --from {report.shadow_schema}")


@projections_app.command("rebuild")
def rebuild_command(
    entity: Entities = None,
    into: Annotated[str | None, typer.Option(help="Shadow schema (default <schema>_rb_<time>)")] = None,
    swap: Annotated[bool, typer.Option(help="Swap the rebuilt tables in when digests match")] = False,
    allow_diff: Annotated[bool, typer.Option(help="Swap even if digests differ (migration rollback)")] = False,
    from_snapshot: Annotated[str | None, typer.Option(help="Start from a snapshot's tables and offsets")] = None,
) -> None:
    """Re-read the log into a shadow schema, compare digests with the live schema, optionally swap."""
    entities = _entities(entity)

    async def work(settings: Settings) -> RebuildReport:
        registry = ConfluentSchemaRegistry(settings.registry_url)
        try:
            return await _with_pool(
                settings,
                lambda pool: rebuild(
                    settings,
                    pool,
                    registry,
                    migration_registry(settings),
                    entities=entities,
                    into=into,
                    swap=swap,
                    allow_diff=allow_diff,
                    from_snapshot=from_snapshot,
                ),
            )
        finally:
            await registry.close()

    report = _run(work)
    _print_rebuild(report)
    if not report.matches and not report.swapped:
        raise typer.Exit(1)


@projections_app.command("swap")
def swap_command(
    source: Annotated[str, typer.Option("--from", help="Schema holding the tables to swap in")],
    entity: Entities = None,
) -> None:
    """Swap entity tables (and their decisions, offsets, dedup rows) in from another schema; undo with the archive."""
    entities = _entities(entity)

    async def work(settings: Settings) -> str:
        archive = f"{settings.pg_schema}_pre_{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
        topics = [settings.topic_for(e) for e in entities]
        await _with_pool(
            settings,
            lambda pool: PgAdmin(pool).swap(
                settings.pg_schema,
                source,
                entities=entities,
                topics=topics,
                group_id=settings.consumer_group,
                archive=archive,
            ),
        )
        return archive

    archive = _run(work)
    console.print(f"swapped {', '.join(entities)} in from {source}; previous tables kept in {archive}")


@projections_app.command("snapshot")
def snapshot_command(
    name: Annotated[str | None, typer.Option(help="Snapshot name (default the time)")] = None,
    entity: Entities = None,
) -> None:
    """Store the entity tables with the offsets they correspond to (a later rebuild can start there)."""
    entities = _entities(entity)
    chosen = name or datetime.now(UTC).strftime("%Y%m%d%H%M%S")

    async def work(settings: Settings) -> Any:
        topics = [settings.topic_for(e) for e in entities]
        return await _with_pool(
            settings,
            lambda pool: PgAdmin(pool).snapshot(settings.pg_schema, chosen, settings.consumer_group, entities, topics),
        )

    info = _run(work)
    console.print(
        f"snapshot {info.name} in schema {info.schema_name}: {sum(d.count for d in info.digests)} live entities, "
        f"offsets {', '.join(f'{p.topic}[{p.partition}]={o}' for p, o in sorted(info.offsets.items())) or 'none'}"
    )


@projections_app.command("snapshots")
def snapshots_command() -> None:
    """List stored snapshots."""

    async def work(settings: Settings) -> Any:
        return await _with_pool(settings, lambda pool: PgAdmin(pool).snapshots(settings.pg_schema))

    table = Table("name", "schema", "entities", "live entities", "partitions")
    for info in _run(work):
        table.add_row(
            info.name,
            info.schema_name,
            ", ".join(info.entities),
            str(sum(d.count for d in info.digests)),
            str(len(info.offsets)),
        )
    console.print(table)


@projections_app.command("compact")
def compact_command(
    retention_s: Annotated[float | None, typer.Option(help="Tombstone retention (default settings)")] = None,
    outbox_retention_s: Annotated[float | None, typer.Option(help="Feed retention (default settings)")] = None,
) -> None:
    """Prune acknowledged outbox rows and compact tombstones every device has read past."""

    async def work(settings: Settings) -> tuple[int, int]:
        async def inner(pool: Pool) -> tuple[int, int]:
            admin, outbox = PgAdmin(pool), PgOutbox(pool, settings.pg_schema)
            pruned = 0
            for tenant in await admin.tenants(settings.pg_schema):
                pruned += await outbox.prune(
                    tenant,
                    retention_s=outbox_retention_s if outbox_retention_s is not None else settings.outbox_retention_s,
                )
            compacted = await admin.compact_tombstones(
                settings.pg_schema,
                default_catalog().entities(),
                retention_s if retention_s is not None else settings.tombstone_retention_s,
            )
            return pruned, compacted

        return await _with_pool(settings, inner)

    pruned, compacted = _run(work)
    console.print(f"pruned {pruned} outbox rows; compacted {compacted} tombstones")


def _store_work(work: Callable[[PgProjectionStore], Awaitable[T]]) -> Callable[[Settings], Coroutine[Any, Any, T]]:
    async def run(settings: Settings) -> T:
        return await _with_pool(settings, lambda pool: work(PgProjectionStore(pool, settings.pg_schema)))

    return run


@conflicts_app.command("list")
def list_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant")] = None,
    entity_id: Annotated[str | None, typer.Option(help="Only this entity")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only decisions nobody settled by hand")] = False,
    limit: Annotated[int, typer.Option(help="Most rows")] = 50,
) -> None:
    """Recorded decisions, newest first."""
    records = _run(_store_work(lambda store: store.decisions(tenant_id=tenant, entity_id=entity_id, limit=limit)))
    table = Table("id", "entity", "field", "rule", "kept", "discarded", "status")
    for record in records:
        if open_only and not record.is_open:
            continue
        d = record.decision
        status = "open" if record.is_open else ("override" if d.rule == "manual-override" else "settled")
        table.add_row(
            d.decision_id[:12],
            f"{d.entity_type}/{d.entity_id}",
            d.field,
            d.rule,
            f"{json.dumps(d.winner_value)} ({d.winner_device_id})",
            f"{json.dumps(d.loser_value)} ({d.loser_device_id})",
            status,
        )
    console.print(table)


@conflicts_app.command("show")
def show_command(decision_id: Annotated[str, typer.Argument(help="Decision id (a unique prefix is enough)")]) -> None:
    """One decision in words."""
    record = _run(_store_work(lambda store: store.decision(decision_id)))
    if record is None:
        console.print(f"[red]no decision matches {decision_id!r}[/red] (unknown, or an ambiguous prefix)")
        raise typer.Exit(2)
    typer.echo(describe(record))


def _parse_set(values: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"--set takes field=value, got {item!r}")
        try:
            parsed[name] = json.loads(raw)  # numbers, null, lists; anything else is a string
        except json.JSONDecodeError:
            parsed[name] = raw
    return parsed


@conflicts_app.command("resolve")
def resolve_command(
    decision_id: Annotated[str, typer.Argument(help="Decision id (a unique prefix is enough)")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the override)")],
    actor: Annotated[str, typer.Option(help="Who (device id becomes operator:<actor>)")],
    keep: Annotated[KeepSide | None, typer.Option(help="Which side of the decision to keep")] = None,
    set_values: Annotated[
        list[str] | None, typer.Option("--set", help="field=value (JSON or text; repeatable)")
    ] = None,
) -> None:
    """Settle a decision by writing an OVERRIDE event to the log (the projector applies it)."""
    side: Keep | None = None if keep is None else ("winner" if keep is KeepSide.WINNER else "loser")
    request = OverrideRequest(decision_id, reason, actor, keep=side, set_values=_parse_set(set_values or []))

    async def work(settings: Settings) -> Any:
        registry = ConfluentSchemaRegistry(settings.registry_url)
        writer = AioKafkaLogWriter(settings)
        try:
            await writer.start()
            encoder = EventEncoder(registry, settings.topic_for, auto_register=settings.registry_auto_register)

            async def inner(pool: Pool) -> Any:
                return await resolve_decision(
                    request,
                    store=PgProjectionStore(pool, settings.pg_schema),
                    sequence=PgOperatorSequence(pool, settings.pg_schema),
                    encoder=encoder,
                    writer=writer,
                )

            return await _with_pool(settings, inner)
        finally:
            await writer.stop()
            await registry.close()

    event = _run(work)
    console.print(
        f"override {event.event_id} written to {get_settings().topic_for(event.entity_type)} "
        f"(device {event.device_id}, seq {event.device_seq}); the projector applies it"
    )
