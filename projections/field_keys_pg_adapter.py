"""Field-key rotation in PostgreSQL: which key seals each sensitive value, and re-sealing with the active key.

Rotation is lazy by itself (a value is re-sealed with the active key whenever its entity is written again);
`reencrypt` finishes it at once, a batch of rows per transaction under row locks (the projector's batches
lock the same rows, so the two serialise). Plaintext does not change, so neither does anything a device or a
digest sees: `last_tx`, `updated_at` and the outbox feed are left alone.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from projections.entity_tables import EntityTable, entity_tables
from projections.field_encryption import PREFIX, FieldCipher
from projections.pg_adapter import Connection, Pool, pg_errors
from projections.sql_migrations import in_schema, quote_ident

__all__ = ["PgFieldKeys"]

_OUTBOX_ROWS = (
    "SELECT pos, body FROM {schema}.outbox WHERE entity_type = $1 AND pos > $2 AND body ? 'payload' "
    "ORDER BY pos LIMIT $3 FOR UPDATE"
)
_OUTBOX_UPDATE = "UPDATE {schema}.outbox SET body = $2 WHERE pos = $1"


class PgFieldKeys:
    """Key usage and re-sealing of one schema's sensitive values."""

    def __init__(self, pool: Pool, schema: str, cipher: FieldCipher) -> None:
        self._pool = pool
        self._schema = schema
        self._cipher = cipher
        self._tables = {name: table for name, table in entity_tables().items() if self._cipher.sensitive.get(name)}

    def _qualified(self, table: EntityTable) -> str:
        return f"{quote_ident(self._schema)}.{quote_ident(table.name)}"

    def _columns(self, table: EntityTable) -> list[str]:
        return sorted(self._cipher.sensitive.get(table.name, frozenset()) & set(table.column_names))

    async def usage(self) -> dict[str, Counter[str]]:
        """Per entity table: how many sensitive values each key id seals ('plain' for values in clear)."""
        found: dict[str, Counter[str]] = {}
        async with pg_errors("field key usage"), self._pool.acquire() as connection:
            for name, table in sorted(self._tables.items()):
                counts: Counter[str] = Counter()
                for column in self._columns(table):
                    rows = await connection.fetch(
                        f"SELECT {quote_ident(column)} AS v FROM {self._qualified(table)} "  # noqa: S608 - quoted
                        f"WHERE {quote_ident(column)} IS NOT NULL AND {quote_ident(column)} <> ''"
                    )
                    counts.update(self._cipher.key_id_of(row["v"]) or "plain" for row in rows)
                found[name] = counts
        return found

    async def reencrypt(self, *, batch: int = 500) -> int:
        """Re-seal every sensitive value not sealed with the active key; how many rows changed."""
        if self._cipher.keyring is None:
            return 0
        changed = 0
        for table in self._tables.values():
            changed += await self._reencrypt_table(table, batch)
            changed += await self._reencrypt_outbox(table.name, batch)
        return changed

    def _stale(self, table: EntityTable) -> str:
        assert self._cipher.keyring is not None
        current = f"{PREFIX}{self._cipher.keyring.active}:%"
        # Literal of our own making (a key id without quotes or ':'), so it may sit in the statement.
        return " OR ".join(
            f"({quote_ident(c)} <> '' AND {quote_ident(c)} NOT LIKE '{current}')" for c in self._columns(table)
        )

    async def _reencrypt_table(self, table: EntityTable, batch: int) -> int:
        select = (
            f"SELECT tenant_id, entity_id, state, {', '.join(quote_ident(c) for c in self._columns(table))} "  # noqa: S608
            f"FROM {self._qualified(table)} WHERE ({self._stale(table)}) AND state IS NOT NULL "
            "ORDER BY tenant_id, entity_id LIMIT $1 FOR UPDATE"
        )
        sets = ", ".join(f"{quote_ident(c)} = ${i + 4}" for i, c in enumerate(self._columns(table)))
        update = f"UPDATE {self._qualified(table)} SET state = $3, {sets} WHERE tenant_id = $1 AND entity_id = $2"  # noqa: S608
        changed = 0
        while True:
            async with pg_errors("re-encrypt"), self._pool.acquire() as connection, connection.transaction():
                rows = await connection.fetch(select, batch)
                for row in rows:
                    await self._reseal_row(connection, update, table, row)
            changed += len(rows)
            if len(rows) < batch:
                return changed

    async def _reseal_row(self, connection: Connection, update: str, table: EntityTable, row: Any) -> None:
        where = (row["tenant_id"], table.name, row["entity_id"])
        columns = self._columns(table)
        plain = {c: self._cipher.open(row[c], "|".join((*where, c))) for c in columns}
        state = self._cipher.seal_state(self._cipher.open_state(row["state"], *where), *where)
        sealed = self._cipher.seal_payload(plain, *where)
        await connection.execute(update, row["tenant_id"], row["entity_id"], state, *(sealed[c] for c in columns))

    async def _reencrypt_outbox(self, entity_type: str, batch: int) -> int:
        assert self._cipher.keyring is not None
        active = self._cipher.keyring.active
        changed, after = 0, 0
        while True:
            async with pg_errors("re-encrypt outbox"), self._pool.acquire() as connection, connection.transaction():
                rows = await connection.fetch(in_schema(_OUTBOX_ROWS, self._schema), entity_type, after, batch)
                for row in rows:
                    body = row["body"]
                    payload = body.get("payload") or {}
                    names = self._cipher.fields_of(entity_type) & set(payload)
                    if all(self._cipher.key_id_of(payload[n]) == active or payload[n] in ("", None) for n in names):
                        continue
                    resealed = self._cipher.seal_body(self._cipher.open_body(body))
                    await connection.execute(in_schema(_OUTBOX_UPDATE, self._schema), row["pos"], resealed)
                    changed += 1
            if rows:
                after = int(rows[-1]["pos"])
            if len(rows) < batch:
                return changed
