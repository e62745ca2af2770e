"""Applies versioned SQL migrations to one PostgreSQL schema and records them in `{schema}.schema_migrations`.

Several processes may start at once (projector replicas, the gateway): an advisory lock keyed by the schema
serialises them, and each file runs in its own transaction together with its bookkeeping row, so a failed
file leaves nothing half-applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from keel.logging import get_logger
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import PROJECTOR_SQL, discover, in_schema, pending, quote_ident

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


async def migrate(pool: Pool, schema: str, directories: Iterable[Path] = (PROJECTOR_SQL,)) -> list[str]:
    """Create the schema if needed and apply pending migrations in version order; names of those applied."""
    quote_ident(schema)  # refuse an unusable name before touching the server
    migrations = discover(directories)
    done: list[str] = []
    async with pg_errors(f"migrate {schema}"), pool.acquire() as connection:
        await connection.execute(_LOCK, schema)
        try:
            await connection.execute(in_schema(_CREATE_SCHEMA, schema))
            await connection.execute(in_schema(_CREATE_TABLE, schema))
            rows = await connection.fetch(in_schema(_APPLIED, schema))
            applied = {int(row["version"]): str(row["checksum"]) for row in rows}
            for migration in pending(migrations, applied):
                async with connection.transaction():
                    await connection.execute(migration.render(schema))
                    await connection.execute(
                        in_schema(_RECORD, schema), migration.version, migration.name, migration.checksum
                    )
                done.append(migration.path.name)
                _log.info("sql migration applied", schema=schema, migration=migration.path.name)
        finally:
            await connection.execute(_UNLOCK, schema)
    return done
