"""Rollout flags in PostgreSQL (`{schema}.rollout_flags`, producers/gateway/sql/103_rollout_flags.sql)."""

from __future__ import annotations

from producers.gateway.rollout import RolloutFlag
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import in_schema

__all__ = ["PgRolloutFlags"]

_SQL = {
    "flags": "SELECT entity, tenants, percent FROM {schema}.rollout_flags",
    "set": "INSERT INTO {schema}.rollout_flags (entity, tenants, percent) VALUES ($1, $2, $3) "
    "ON CONFLICT (entity) DO UPDATE SET tenants = excluded.tenants, percent = excluded.percent, updated_at = now()",
    "clear": "DELETE FROM {schema}.rollout_flags WHERE entity = $1",
}


class PgRolloutFlags:
    """`RolloutFlags` on a pool; read at every handshake (one small primary-key table)."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self._pool = pool
        self._sql = {name: in_schema(text, schema) for name, text in _SQL.items()}

    async def flags(self) -> dict[str, RolloutFlag]:
        """Every flag."""
        async with pg_errors("read rollout flags"), self._pool.acquire() as connection:
            rows = await connection.fetch(self._sql["flags"])
        return {row["entity"]: RolloutFlag(row["entity"], tuple(row["tenants"]), float(row["percent"])) for row in rows}

    async def set_flag(self, flag: RolloutFlag) -> None:
        """Create or replace a flag."""
        async with pg_errors("set rollout flag"), self._pool.acquire() as connection:
            await connection.execute(self._sql["set"], flag.entity, list(flag.tenants), flag.percent)

    async def clear_flag(self, entity: str) -> None:
        """Drop a flag."""
        async with pg_errors("clear rollout flag"), self._pool.acquire() as connection:
            await connection.execute(self._sql["clear"], entity)
