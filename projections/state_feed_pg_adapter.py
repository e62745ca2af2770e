"""`StateFeed` on PostgreSQL: the outbox of every tenant by (tx, pos), entity states, and relay cursors.

Rows are read only below `pg_snapshot_xmin(pg_current_snapshot())`, like device feeds
(`projections/outbox_pg_adapter.py`): every transaction older than the oldest running one has finished, so
nothing can appear behind the relay's cursor. The horizon check and the read share one repeatable-read
snapshot, so a prune between them cannot open a silent gap. `outbox_commit_order` (migration 006) serves
the cross-tenant order.
"""

from __future__ import annotations

from typing import Any

from keel.errors import TransientError
from projections.conflict_rules import EntityState
from projections.entity_tables import entity_tables
from projections.field_encryption import FieldCipher, default_field_cipher
from projections.outbox import Cursor, OutboxKind
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import in_schema, quote_ident
from projections.state_codec import state_from_json
from projections.state_feed import EntityKey, FeedChange, FeedPage

__all__ = ["PgStateFeed"]

_PRUNED_PAST = (
    "SELECT EXISTS (SELECT 1 FROM {schema}.outbox_horizons "
    "WHERE (pruned_tx, pruned_pos) > ($1::text::xid8, $2::bigint))"
)
_READ = (
    "SELECT tx::text AS tx, pos, tenant_id, kind, entity_type, entity_id, trace, "
    "CASE WHEN kind = 'resync' THEN ARRAY(SELECT jsonb_array_elements_text(body->'entity_types')) END AS types "
    "FROM {schema}.outbox WHERE device_id IS NULL AND (tx, pos) > ($1::text::xid8, $2::bigint) "
    "AND tx < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY tx, pos LIMIT $3"
)
_RESUME = (
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin, "
    "(SELECT pruned_tx::text FROM {schema}.outbox_horizons ORDER BY pruned_tx DESC, pruned_pos DESC LIMIT 1) AS htx, "
    "(SELECT pruned_pos FROM {schema}.outbox_horizons ORDER BY pruned_tx DESC, pruned_pos DESC LIMIT 1) AS hpos"
)
_LOAD = "SELECT cursor_tx::text AS tx, cursor_pos AS pos FROM {schema}.relay_cursors WHERE relay = $1"
_STORE = (
    "INSERT INTO {schema}.relay_cursors AS c (relay, cursor_tx, cursor_pos) VALUES ($1, $2::text::xid8, $3) "
    "ON CONFLICT (relay) DO UPDATE SET cursor_tx = EXCLUDED.cursor_tx, cursor_pos = EXCLUDED.cursor_pos, "
    "updated_at = now() WHERE (c.cursor_tx, c.cursor_pos) < (EXCLUDED.cursor_tx, EXCLUDED.cursor_pos)"
)


class PgStateFeed:
    """The feed, states and relay cursors of one projection schema."""

    def __init__(self, pool: Pool, schema: str, *, cipher: FieldCipher | None = None) -> None:
        self._pool = pool
        self._schema = schema
        self._cipher = cipher if cipher is not None else default_field_cipher()  # sensitive fields opened
        self._sql = {
            name: in_schema(text, schema)
            for name, text in {
                "pruned": _PRUNED_PAST,
                "read": _READ,
                "resume": _RESUME,
                "load": _LOAD,
                "store": _STORE,
            }.items()
        }

    async def read(self, after: Cursor, limit: int = 500) -> FeedPage:
        """Rows after `after` in commit order, or `pruned` when a horizon lies above it."""
        async with (
            pg_errors("read state feed"),
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            if await connection.fetchval(self._sql["pruned"], str(after.tx), after.pos):
                return FeedPage((), after, pruned=True)
            rows = await connection.fetch(self._sql["read"], str(after.tx), after.pos, limit)
        changes = tuple(
            FeedChange(
                Cursor(int(row["tx"]), int(row["pos"])),
                row["tenant_id"],
                OutboxKind(row["kind"]),
                row["entity_type"],
                row["entity_id"],
                row["trace"],
                tuple(row["types"] or ()),
            )
            for row in rows
        )
        return FeedPage(changes, changes[-1].cursor if changes else after)

    async def resume_point(self) -> Cursor:
        """(oldest running transaction, 0), never below the highest pruned horizon."""
        async with pg_errors("state feed resume point"), self._pool.acquire() as connection:
            row = await connection.fetchrow(self._sql["resume"])
        if row is None:  # one row always comes back; this only narrows the type
            raise TransientError("state feed resume point: no row returned")
        xmin = Cursor(int(row["xmin"]), 0)
        if row["htx"] is None:
            return xmin
        return max(xmin, Cursor(int(row["htx"]), int(row["hpos"])))

    async def states_after(
        self, entity_type: str, after: EntityKey | None, limit: int = 500, *, tenant_id: str | None = None
    ) -> list[EntityState]:
        """States in (tenant, entity id) order after `after`."""
        table = f"{quote_ident(self._schema)}.{quote_ident(entity_tables()[entity_type].name)}"
        sql = (
            f"SELECT tenant_id, entity_id, state FROM {table} "  # noqa: S608 - identifiers quoted by quote_ident
            "WHERE state IS NOT NULL AND ($1::text IS NULL OR tenant_id = $1) "
            "AND ($2::text IS NULL OR (tenant_id, entity_id) > ($2::text, $3::text)) "
            "ORDER BY tenant_id, entity_id LIMIT $4"
        )
        start_tenant, start_id = after if after is not None else (None, None)
        async with pg_errors("read states"), self._pool.acquire() as connection:
            rows = await connection.fetch(sql, tenant_id, start_tenant, start_id, limit)
        return [self._state(entity_type, row) for row in rows]

    def _state(self, entity_type: str, row: Any) -> EntityState:
        tenant, entity_id = row["tenant_id"], row["entity_id"]
        opened = self._cipher.open_state(row["state"], tenant, entity_type, entity_id)
        return state_from_json(tenant, entity_type, entity_id, opened)

    async def load_cursor(self, relay: str) -> Cursor | None:
        """The stored cursor of `relay`."""
        async with pg_errors("load relay cursor"), self._pool.acquire() as connection:
            row = await connection.fetchrow(self._sql["load"], relay)
        return None if row is None else Cursor(int(row["tx"]), int(row["pos"]))

    async def store_cursor(self, relay: str, cursor: Cursor) -> None:
        """Store the cursor unless it already stands further."""
        async with pg_errors("store relay cursor"), self._pool.acquire() as connection:
            await connection.execute(self._sql["store"], relay, str(cursor.tx), cursor.pos)
