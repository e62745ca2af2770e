"""`OutboxReader` on PostgreSQL: the per-tenant feed read by (tx, pos) below the oldest running transaction.

Why the `tx < pg_snapshot_xmin(pg_current_snapshot())` bound: `pos` comes from a sequence, so a transaction
can take a smaller `pos` than another yet commit after it. Ordering by the writing transaction's id and
reading only transactions older than every still-running one means each row a reader skips is already
committed — a cursor can never move past a row that appears later. The price: the feed lags by the
longest-running transaction on the server (docs/projections.md).
"""

from __future__ import annotations

from typing import Any

from projections.field_encryption import FieldCipher, default_field_cipher
from projections.outbox import Cursor, FeedItem, OutboxEntry, OutboxKind, Page
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import in_schema

__all__ = ["PgOutbox"]

_HORIZON = "SELECT pruned_tx::text AS tx, pruned_pos AS pos FROM {schema}.outbox_horizons WHERE tenant_id = $1"
_READ = (
    "SELECT tx::text AS tx, pos, device_id, kind, entity_type, entity_id, event_id, body, trace, "
    "(extract(epoch FROM created_at) * 1000)::bigint AS created_ms FROM {schema}.outbox "
    "WHERE tenant_id = $1 AND (device_id IS NULL OR device_id = $2) AND (tx, pos) > ($3::text::xid8, $4::bigint) "
    "AND tx < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY tx, pos LIMIT $5"
)
_ACKNOWLEDGE = (
    "INSERT INTO {schema}.device_cursors AS c (tenant_id, device_id, cursor, cursor_tx, cursor_pos) "
    "VALUES ($1, $2, $3, $4::text::xid8, $5) ON CONFLICT (tenant_id, device_id) DO UPDATE SET "
    "cursor = EXCLUDED.cursor, cursor_tx = EXCLUDED.cursor_tx, cursor_pos = EXCLUDED.cursor_pos, acked_at = now() "
    "WHERE (c.cursor_tx, c.cursor_pos) < (EXCLUDED.cursor_tx, EXCLUDED.cursor_pos)"
)
_XMIN = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
_OLDEST_CURSOR = (
    "SELECT cursor_tx::text AS tx, cursor_pos AS pos FROM {schema}.device_cursors WHERE tenant_id = $1 "
    "ORDER BY cursor_tx, cursor_pos LIMIT 1"
)
_NEWEST_EXPIRED = (
    "SELECT tx::text AS tx, pos FROM {schema}.outbox WHERE tenant_id = $1 "
    "AND created_at < now() - make_interval(secs => $2) AND tx < pg_snapshot_xmin(pg_current_snapshot()) "
    "ORDER BY tx DESC, pos DESC LIMIT 1"
)
_DELETE = "DELETE FROM {schema}.outbox WHERE tenant_id = $1 AND (tx, pos) <= ($2::text::xid8, $3::bigint)"
_RAISE_HORIZON = (
    "INSERT INTO {schema}.outbox_horizons AS h (tenant_id, pruned_tx, pruned_pos) VALUES ($1, $2::text::xid8, $3) "
    "ON CONFLICT (tenant_id) DO UPDATE SET pruned_tx = EXCLUDED.pruned_tx, pruned_pos = EXCLUDED.pruned_pos, "
    "pruned_at = now() WHERE (h.pruned_tx, h.pruned_pos) < (EXCLUDED.pruned_tx, EXCLUDED.pruned_pos)"
)


def _cursor(row: Any) -> Cursor | None:
    return None if row is None else Cursor(int(row["tx"]), int(row["pos"]))


class PgOutbox:
    """The outbox tables of one schema."""

    def __init__(self, pool: Pool, schema: str, *, cipher: FieldCipher | None = None) -> None:
        self._pool = pool
        self._cipher = cipher if cipher is not None else default_field_cipher()  # sensitive payload fields
        self._sql = {
            name: in_schema(text, schema)
            for name, text in {
                "horizon": _HORIZON,
                "read": _READ,
                "acknowledge": _ACKNOWLEDGE,
                "oldest": _OLDEST_CURSOR,
                "expired": _NEWEST_EXPIRED,
                "delete": _DELETE,
                "raise_horizon": _RAISE_HORIZON,
            }.items()
        }

    async def read(self, tenant_id: str, device_id: str, cursor: str | None, limit: int = 500) -> Page:
        """Rows after `cursor` for this device, or resync_required if they were pruned."""
        after = Cursor.parse(cursor)
        async with (
            pg_errors("read outbox"),
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            horizon = _cursor(await connection.fetchrow(self._sql["horizon"], tenant_id))
            if horizon is not None and after < horizon:
                return Page((), after.encode(), resync_required=True)
            rows = await connection.fetch(self._sql["read"], tenant_id, device_id, str(after.tx), after.pos, limit)
        items = tuple(self._item(tenant_id, row, self._cipher) for row in rows)
        return Page(items, (items[-1].cursor if items else after).encode())

    @staticmethod
    def _item(tenant_id: str, row: Any, cipher: FieldCipher) -> FeedItem:
        entry = OutboxEntry(
            tenant_id,
            row["device_id"],
            OutboxKind(row["kind"]),
            row["entity_type"],
            row["entity_id"],
            row["event_id"],
            cipher.open_body(row["body"]),
            row["trace"],
        )
        return FeedItem(Cursor(int(row["tx"]), int(row["pos"])), entry, int(row["created_ms"]))

    async def acknowledge(self, tenant_id: str, device_id: str, cursor: str) -> None:
        """Store the device's cursor unless it already stands further."""
        parsed = Cursor.parse(cursor)
        async with pg_errors("acknowledge"), self._pool.acquire() as connection:
            await connection.execute(
                self._sql["acknowledge"], tenant_id, device_id, parsed.encode(), str(parsed.tx), parsed.pos
            )

    async def current_cursor(self, tenant_id: str) -> str:
        """(oldest running transaction, 0), never below the tenant's pruned horizon.

        Rows of older transactions are committed, so a state read after this call contains them; rows at or
        above it are read again, which merges idempotently.
        """
        async with pg_errors("current cursor"), self._pool.acquire() as connection:
            xmin = Cursor(int(await connection.fetchval(_XMIN)), 0)
            horizon = _cursor(await connection.fetchrow(self._sql["horizon"], tenant_id))
        return max(xmin, horizon or xmin).encode()

    async def prune(self, tenant_id: str, *, retention_s: float | None = None) -> int:
        """Drop rows at or below the oldest device cursor (and rows older than `retention_s`); rows dropped."""
        async with pg_errors("prune outbox"), self._pool.acquire() as connection, connection.transaction():
            limit = _cursor(await connection.fetchrow(self._sql["oldest"], tenant_id))
            if retention_s is not None:
                forced = _cursor(await connection.fetchrow(self._sql["expired"], tenant_id, retention_s))
                if forced is not None:
                    limit = forced if limit is None else max(limit, forced)
            if limit is None:
                return 0
            status = await connection.execute(self._sql["delete"], tenant_id, str(limit.tx), limit.pos)
            await connection.execute(self._sql["raise_horizon"], tenant_id, str(limit.tx), limit.pos)
        return int(status.rsplit(" ", 1)[-1])
