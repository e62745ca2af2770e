"""Checkpoints in PostgreSQL: the snapshot they vouch for, and `{schema}.audit_checkpoints` (sql/203)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from projections.chain_heads import ChainHead
from projections.chain_heads_pg_adapter import PgChainBook
from projections.checkpoints import CheckpointBody, CheckpointKey, SignedCheckpoint
from projections.digest import digests_by_tenant
from projections.pg_adapter import Connection, Pool, pg_errors
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import in_schema

__all__ = ["PgCheckpoints"]

_SQL = {
    "offsets": "SELECT topic, partition, next_offset FROM {schema}.consumer_offsets WHERE group_id = $1 "
    "ORDER BY topic, partition",
    "insert": "INSERT INTO {schema}.audit_checkpoints (tenant_id, key_id, body, signature) VALUES ($1, $2, $3, $4) "
    "RETURNING checkpoint_id",
    "list": "SELECT checkpoint_id, key_id, body, signature FROM {schema}.audit_checkpoints "
    "WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY checkpoint_id",
    "tenants": "SELECT tenant_id FROM {schema}.chain_heads UNION SELECT tenant_id FROM {schema}.applied_ops ORDER BY 1",
}


class PgCheckpoints:
    """Reads what a checkpoint vouches for, stores signed checkpoints, lists them."""

    def __init__(self, pool: Pool, schema: str, entities: Sequence[str]) -> None:
        self._pool = pool
        self.schema = schema
        self._entities = tuple(entities)
        self._sql = {name: in_schema(text, schema) for name, text in _SQL.items()}
        self._store = PgProjectionStore(pool, schema)
        self._chains = PgChainBook(schema)

    async def body_on(self, connection: Connection, tenant_id: str, group_id: str) -> CheckpointBody:
        """The body for one tenant, read on the caller's connection (its snapshot)."""
        offsets = await connection.fetch(self._sql["offsets"], group_id)
        heads: list[ChainHead] = await self._chains.heads(connection, tenant_id)
        digests = []
        for entity in self._entities:
            rows = await self._store.visible_rows_on(connection, entity, tenant_id)
            for count, digest in digests_by_tenant(rows).values():
                digests.append((entity, count, digest))
        return CheckpointBody(
            tenant_id,
            int(time.time() * 1000),
            group_id,
            tuple((r["topic"], int(r["partition"]), int(r["next_offset"])) for r in offsets),
            tuple((h.device_id, h.head_seq, h.head_hash.hex() if h.head_hash else None) for h in heads),
            tuple(sorted(digests)),
        )

    async def body(self, tenant_id: str, group_id: str) -> CheckpointBody:
        """The body for one tenant, read in one repeatable-read snapshot."""
        async with (
            pg_errors("checkpoint snapshot"),
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await self.body_on(connection, tenant_id, group_id)

    async def write(self, key: CheckpointKey, tenant_id: str, group_id: str) -> SignedCheckpoint:
        """Snapshot, sign and store one tenant's checkpoint."""
        body = await self.body(tenant_id, group_id)
        key_id, signature = key.sign(body)
        async with pg_errors("write checkpoint"), self._pool.acquire() as connection:
            checkpoint_id = await connection.fetchval(self._sql["insert"], tenant_id, key_id, body.as_json(), signature)
        return SignedCheckpoint(int(checkpoint_id), body, key_id, signature)

    async def write_all(self, key: CheckpointKey, group_id: str) -> list[SignedCheckpoint]:
        """A checkpoint for every tenant with projected ops."""
        return [await self.write(key, tenant, group_id) for tenant in await self.tenants()]

    async def tenants(self) -> list[str]:
        """Tenants with applied ops or chain heads."""
        async with pg_errors("checkpoint tenants"), self._pool.acquire() as connection:
            return [str(r["tenant_id"]) for r in await connection.fetch(self._sql["tenants"])]

    async def checkpoints(self, tenant_id: str | None = None) -> list[SignedCheckpoint]:
        """Stored checkpoints (of one tenant), oldest first; a malformed body raises IntegrityError."""
        async with pg_errors("list checkpoints"), self._pool.acquire() as connection:
            rows = await connection.fetch(self._sql["list"], tenant_id)
        return [_checkpoint(row) for row in rows]


def _checkpoint(row: Any) -> SignedCheckpoint:
    return SignedCheckpoint(
        int(row["checkpoint_id"]), CheckpointBody.from_json(row["body"]), row["key_id"], bytes(row["signature"])
    )
