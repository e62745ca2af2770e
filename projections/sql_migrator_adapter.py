"""Applies versioned SQL migrations to one PostgreSQL schema and records them in `{schema}.schema_migrations`.

Several processes may start at once (projector replicas, the gateway): an advisory lock keyed by the schema
serialises them, and each file runs in its own transaction together with its bookkeeping row, so a failed
file leaves nothing half-applied. When nothing is pending no DDL runs at all (services start under roles
that may not create anything); a role that must migrate but may not gets a `ConfigurationError` naming the
owner's command.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import asyncpg

from keel.errors import ConfigurationError
from keel.logging import get_logger
from projections.pg_adapter import Connection, Pool, pg_errors
from projections.sql_migrations import PROJECTOR_SQL, SqlMigration, discover, in_schema, pending, quote_ident

__all__ = ["applied_versions", "migrate"]

_log = get_logger("sql-migrator")

_LOCK = "SELECT pg_advisory_lock(hashtext('keel-migrate:' || $1))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext('keel-migrate:' || $1))"
_CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {schema}"
_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
    "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
)
_APPLIED = "SELECT version, checksum FROM {schema}.schema_migrations"
_RECORD = "INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


async def applied_versions(pool: Pool, schema: str) -> dict[int, str]:
    """Version → checksum of every migration recorded in the schema (empty if it has none)."""
    async with pg_errors("read schema_migrations"), pool.acquire() as connection:
        table = f"{quote_ident(schema)}.schema_migrations"
        if not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            return {}
        rows = await connection.fetch(in_schema(_APPLIED, schema))
    return {int(row["version"]): str(row["checksum"]) for row in rows}


async def _recorded(connection: Connection, schema: str) -> dict[int, str] | None:
    """Version → checksum from `schema_migrations`, or None when the table (or the schema) does not exist."""
    table = f"{quote_ident(schema)}.schema_migrations"
    if not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
        return None
    rows = await connection.fetch(in_schema(_APPLIED, schema))
    return {int(row["version"]): str(row["checksum"]) for row in rows}


def _owner_needed(schema: str, todo: list[SqlMigration], error: Exception) -> ConfigurationError:
    names = ", ".join(m.path.name for m in todo) or "the schema itself"
    return ConfigurationError(
        f"schema {schema!r} needs migrations ({names}) but this role may not run DDL ({error}); "
        "run them as the schema owner first: `keel stack roles` applies every migration, "
        "`keel projections migrate` the projector's, or start the service once with the owner's DSN"
    )


async def migrate(pool: Pool, schema: str, directories: Iterable[Path] = (PROJECTOR_SQL,)) -> list[str]:
    """Apply pending migrations in version order (creating the schema if needed); names of those applied.

    Nothing but reads happens when every migration is already recorded, so a service running under its
    least-privilege role (no CREATE, no DDL) starts on a schema its owner migrated; when something is
    pending and the role may not apply it, the error says to run the migrations as the owner.
    """
    quote_ident(schema)  # refuse an unusable name before touching the server
    migrations = discover(directories)
    done: list[str] = []
    async with pg_errors(f"migrate {schema}"), pool.acquire() as connection:
        try:
            recorded = await _recorded(connection, schema)
        except asyncpg.InsufficientPrivilegeError as error:
            raise _owner_needed(schema, migrations, error) from error
        if recorded is not None and not pending(migrations, recorded):
            return done
        await connection.execute(_LOCK, schema)
        try:
            try:
                await connection.execute(in_schema(_CREATE_SCHEMA, schema))
                await connection.execute(in_schema(_CREATE_TABLE, schema))
            except asyncpg.InsufficientPrivilegeError as error:
                raise _owner_needed(schema, pending(migrations, recorded or {}), error) from error
            rows = await connection.fetch(in_schema(_APPLIED, schema))
            applied = {int(row["version"]): str(row["checksum"]) for row in rows}
            for migration in pending(migrations, applied):
                try:
                    async with connection.transaction():
                        await connection.execute(migration.render(schema))
                        await connection.execute(
                            in_schema(_RECORD, schema), migration.version, migration.name, migration.checksum
                        )
                except asyncpg.InsufficientPrivilegeError as error:
                    raise _owner_needed(schema, pending(migrations, applied), error) from error
                done.append(migration.path.name)
                _log.info("sql migration applied", schema=schema, migration=migration.path.name)
        finally:
            await connection.execute(_UNLOCK, schema)
    return done
