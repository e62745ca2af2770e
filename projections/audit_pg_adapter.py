"""What `keel audit verify` compares, read from one schema in one snapshot: offsets, rows, chain heads."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.batch import TopicPartition
from projections.chain_heads import ChainHead
from projections.chain_heads_pg_adapter import PgChainBook
from projections.entity_tables import entity_tables
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import in_schema, quote_ident

__all__ = ["PgAuditReader", "ProjectionSnapshot", "RowKey"]

RowKey = tuple[str, str, str]  # (entity_type, tenant_id, entity_id)

_OFFSETS = "SELECT topic, partition, next_offset FROM {schema}.consumer_offsets WHERE group_id = $1"
_BEYOND = (
    "SELECT l.device_id, l.seq FROM {schema}.chain_links l JOIN {schema}.chain_heads h ON h.device_id = l.device_id "
    "WHERE l.seq > h.head_seq AND ($1::text IS NULL OR h.tenant_id = $1) ORDER BY l.device_id, l.seq"
)


@dataclass
class ProjectionSnapshot:
    """One schema's projection as `keel audit verify` compares it."""

    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    rows: dict[RowKey, tuple[dict[str, Any] | None, dict[str, Any]]] = field(default_factory=dict)  # visible, state
    heads: dict[str, ChainHead] = field(default_factory=dict)
    beyond_head: dict[str, list[int]] = field(default_factory=dict)  # linked seqs past a stuck head, per device


class PgAuditReader:
    """Reads a `ProjectionSnapshot` of one schema."""

    def __init__(self, pool: Pool, schema: str, entities: Sequence[str]) -> None:
        self._pool = pool
        self._schema = schema
        self._tables = {name: table for name, table in entity_tables().items() if name in entities}
        self._chains = PgChainBook(schema)

    def _rows_sql(self, entity: str) -> str:
        table = self._tables[entity]
        columns = ", ".join(quote_ident(c.name) for c in table.columns)
        qualified = f"{quote_ident(self._schema)}.{quote_ident(table.name)}"
        return (
            f"SELECT tenant_id, entity_id, deleted, state, {columns} FROM {qualified} "  # noqa: S608 - quoted names
            "WHERE state IS NOT NULL AND ($1::text IS NULL OR tenant_id = $1)"
        )

    async def snapshot(self, tenant_id: str | None, group_id: str) -> ProjectionSnapshot:
        """Offsets of `group_id`, and the rows, heads and chain holes of one tenant (or all)."""
        found = ProjectionSnapshot()
        async with (
            pg_errors("audit snapshot"),
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            for row in await connection.fetch(in_schema(_OFFSETS, self._schema), group_id):
                found.offsets[TopicPartition(row["topic"], int(row["partition"]))] = int(row["next_offset"])
            for entity, table in sorted(self._tables.items()):
                for row in await connection.fetch(self._rows_sql(entity), tenant_id):
                    visible = None if row["deleted"] else table.payload_from_row(row)
                    found.rows[(entity, row["tenant_id"], row["entity_id"])] = (visible, dict(row["state"]))
            found.heads = {h.device_id: h for h in await self._chains.heads(connection, tenant_id)}
            beyond: dict[str, list[int]] = defaultdict(list)
            for row in await connection.fetch(in_schema(_BEYOND, self._schema), tenant_id):
                beyond[row["device_id"]].append(int(row["seq"]))
            found.beyond_head = dict(beyond)
        return found
