"""`keel rollout …`: show, set and clear the live rollout cohorts every gateway reads at handshake.

Registered by the composition root (deploy/cli.py). An operator runs it as the schema's owner (the
gateway's own role may only read `{schema}.rollout_flags`, deploy/local/database_roles.py); each gateway
instance applies a change from its next handshake on, without a restart (producers/gateway/rollout.py).
Exit codes: 0 done, 1 nothing to clear, 2 unusable input or configuration (unknown entity, bad percent,
database unreachable).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from keel.errors import KeelError
from keel.settings import get_settings
from producers.gateway.rollout import RolloutFlag, RolloutFlags
from producers.gateway.rollout_pg_adapter import PgRolloutFlags
from projections.pg_adapter import connect_pool
from schemas.catalog import Catalog, default_catalog

__all__ = ["describe_rollout", "rollout_app"]

T = TypeVar("T")
console = Console()
rollout_app = typer.Typer(
    help="Live rollout cohorts of entities' newest schema versions: show, set, clear.", no_args_is_help=True
)

DatabaseOption = Annotated[
    str | None, typer.Option("--database-url", help="PostgreSQL DSN of the owner (default: KEEL_DATABASE_URL)")
]
SchemaOption = Annotated[str | None, typer.Option("--schema", help="PostgreSQL schema (default: KEEL_PG_SCHEMA)")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _run(database_url: str | None, schema: str | None, work: Callable[[RolloutFlags], Awaitable[T]]) -> T:
    settings = get_settings()

    async def main() -> T:
        pool = await connect_pool(database_url or settings.database_url, max_size=1)
        try:
            return await work(PgRolloutFlags(pool, schema or settings.pg_schema))
        finally:
            await pool.close()

    try:
        return asyncio.run(main())
    except KeelError as error:
        raise _fail(f"{type(error).__name__}: {error}") from error


def _cohort(tenants: tuple[str, ...], percent: float) -> str:
    parts = [f"tenants {', '.join(tenants)}"] if tenants else []
    if percent:
        parts.append(f"{percent:g}% of devices")
    return " + ".join(parts) or "nobody"


def describe_rollout(catalog: Catalog, flags: dict[str, RolloutFlag]) -> list[dict[str, Any]]:
    """Per entity: its versions, the cohort of subjects.toml, the live flag and the cohort in force."""
    rows: list[dict[str, Any]] = []
    for entity in catalog.entities():
        policy = catalog.policy(entity)
        flag = flags.get(entity)
        tenants, percent = (flag.tenants, flag.percent) if flag else (policy.rollout_tenants, policy.rollout_percent)
        rows.append(
            {
                "entity": entity,
                "stable_version": policy.stable_version,
                "newest_version": policy.newest_version,
                "configured": {"tenants": list(policy.rollout_tenants), "percent": policy.rollout_percent},
                "flag": {"tenants": list(flag.tenants), "percent": flag.percent} if flag else None,
                "in_force": {"tenants": list(tenants), "percent": percent},
                "has_rollout": policy.newest_version > policy.stable_version,
            }
        )
    rows.extend(
        {"entity": entity, "flag": {"tenants": list(flag.tenants), "percent": flag.percent}, "unknown": True}
        for entity, flag in sorted(flags.items())
        if entity not in catalog.schemas
    )
    return rows


@rollout_app.command("show")
def show_command(
    database_url: DatabaseOption = None,
    schema: SchemaOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Each entity's cohort for its newest version: from subjects.toml, or the live flag that replaces it."""
    rows = describe_rollout(default_catalog(), _run(database_url, schema, lambda store: store.flags()))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("entity", "stable → newest", "subjects.toml", "live flag", "in force")
    for row in rows:
        flag = row["flag"]
        live = _cohort(tuple(flag["tenants"]), flag["percent"]) if flag else "-"
        if row.get("unknown"):
            table.add_row(row["entity"], "not in this build", "-", live, "ignored")
            continue
        configured, in_force = row["configured"], row["in_force"]
        table.add_row(
            row["entity"],
            f"v{row['stable_version']} → v{row['newest_version']}",
            _cohort(tuple(configured["tenants"]), configured["percent"]),
            live,
            _cohort(tuple(in_force["tenants"]), in_force["percent"]) if row["has_rollout"] else "nothing to roll out",
        )
    console.print(table)


def _tenants(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


@rollout_app.command("set")
def set_command(
    entity: Annotated[str, typer.Argument(help="Entity type, e.g. task")],
    tenants: Annotated[str, typer.Option("--tenants", help="Comma-separated tenant ids that get the newest")] = "",
    percent: Annotated[float, typer.Option("--percent", help="Share of devices (0-100) that get the newest")] = 0.0,
    database_url: DatabaseOption = None,
    schema: SchemaOption = None,
) -> None:
    """Replace an entity's cohort (tenants and share of devices) for every gateway, from their next handshake."""
    catalog = default_catalog()
    if entity not in catalog.schemas:
        raise _fail(f"unknown entity type {entity!r}; known: {', '.join(catalog.entities())}")
    try:
        flag = RolloutFlag(entity, _tenants(tenants), percent)
    except KeelError as error:
        raise _fail(str(error)) from error

    async def work(store: RolloutFlags) -> None:
        await store.set_flag(flag)

    _run(database_url, schema, work)
    policy = catalog.policy(entity)
    console.print(f"{entity}: v{policy.newest_version} goes to {_cohort(flag.tenants, flag.percent)}")
    if policy.newest_version <= policy.stable_version:
        console.print(
            f"[yellow]note:[/yellow] subjects.toml stages nothing newer than the stable v{policy.stable_version} "
            f"of {entity}: the cohort changes nothing until a newer version is staged"
        )


@rollout_app.command("clear")
def clear_command(
    entity: Annotated[str, typer.Argument(help="Entity type, e.g. task")],
    database_url: DatabaseOption = None,
    schema: SchemaOption = None,
) -> None:
    """Drop an entity's live flag: gateways follow subjects.toml again from their next handshake."""

    async def work(store: RolloutFlags) -> bool:
        if entity not in await store.flags():
            return False
        await store.clear_flag(entity)
        return True

    if not _run(database_url, schema, work):
        console.print(f"no live rollout flag for {entity}")
        raise typer.Exit(1)
    console.print(f"{entity}: the live flag is gone; subjects.toml applies again")
