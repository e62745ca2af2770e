"""The push ledger in PostgreSQL: `device_heads` and `device_seq_outcomes` (sql/102_push_ledger.sql).

A session is one transaction holding `pg_advisory_xact_lock` on the device (keyed by schema and device id),
so two gateway instances never interleave one device's pushes; the lock goes with the transaction, also
when the connection dies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from keel.errors import SequenceError
from producers.gateway.push_ledger import LedgerSession, Outcome, SeqOutcome
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import quote_ident

__all__ = ["PgPushLedger"]

# `{schema}` is replaced by the quoted schema name, as in the SQL migration files.
_SQL = {
    "lock": "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
    "head": "SELECT head_seq FROM {schema}.device_heads WHERE device_id = $1",
    "outcomes": "SELECT seq, event_id, outcome, code, reason, field, op_hash, prev_hash, signature "
    "FROM {schema}.device_seq_outcomes WHERE device_id = $1 AND seq = ANY($2::bigint[])",
    # One statement over arrays, not one per seq: a push of 500 ops records 500 outcomes.
    "record": "INSERT INTO {schema}.device_seq_outcomes (device_id, seq, event_id, outcome, code, reason, field, "
    "op_hash, prev_hash, signature) SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], "
    "$6::text[], $7::text[], $8::bytea[], $9::bytea[], $10::bytea[])",
    "head_hash": "SELECT o.op_hash FROM {schema}.device_heads h JOIN {schema}.device_seq_outcomes o "
    "ON o.device_id = h.device_id AND o.seq = h.head_seq WHERE h.device_id = $1",
    "move_head": "INSERT INTO {schema}.device_heads (device_id, tenant_id, head_seq) VALUES ($1, $2, $3) "
    "ON CONFLICT (device_id) DO UPDATE SET head_seq = excluded.head_seq, updated_at = now()",
}


class _PgSession:
    def __init__(
        self, connection: PoolConnectionProxy[Record], sql: dict[str, str], tenant_id: str, device_id: str
    ) -> None:
        self._db = connection
        self._sql = sql
        self._tenant_id = tenant_id
        self._device_id = device_id
        self._head: int | None = None

    async def head(self) -> int:
        if self._head is None:
            value = await self._db.fetchval(self._sql["head"], self._device_id)
            self._head = int(value) if value is not None else 0
        return self._head

    async def outcomes(self, seqs: Sequence[int]) -> dict[int, SeqOutcome]:
        if not seqs:
            return {}
        rows = await self._db.fetch(
            self._sql["outcomes"],
            self._device_id,
            list(seqs),
        )
        return {
            int(r["seq"]): SeqOutcome(
                int(r["seq"]),
                r["event_id"],
                Outcome(r["outcome"]),
                r["code"],
                r["reason"],
                r["field"],
                _bytes(r["op_hash"]),
                _bytes(r["prev_hash"]),
                _bytes(r["signature"]),
            )
            for r in rows
        }

    async def record(self, outcomes: Sequence[SeqOutcome], head: int) -> None:
        current = await self.head()
        if head < current:
            raise SequenceError(f"the head of {self._device_id} may not move back from {current} to {head}")
        if outcomes:
            await self._db.execute(
                self._sql["record"],
                self._device_id,
                [o.seq for o in outcomes],
                [o.event_id for o in outcomes],
                [o.outcome.value for o in outcomes],
                [o.code for o in outcomes],
                [o.reason for o in outcomes],
                [o.field for o in outcomes],
                [o.hash for o in outcomes],
                [o.prev_hash for o in outcomes],
                [o.signature for o in outcomes],
            )
        await self._db.execute(
            self._sql["move_head"],
            self._device_id,
            self._tenant_id,
            head,
        )
        self._head = head


def _bytes(value: bytes | None) -> bytes | None:
    return bytes(value) if value is not None else None


class PgPushLedger:
    """`PushLedger` on a pool."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self._pool = pool
        self._schema_name = schema
        self._sql = {name: text.replace("{schema}", quote_ident(schema)) for name, text in _SQL.items()}

    @asynccontextmanager
    async def _session(self, tenant_id: str, device_id: str) -> AsyncIterator[LedgerSession]:
        async with pg_errors("push ledger"), self._pool.acquire() as connection, connection.transaction():
            await connection.execute(self._sql["lock"], f"keel-push:{self._schema_name}:{device_id}")
            yield _PgSession(connection, self._sql, tenant_id, device_id)

    def session(self, tenant_id: str, device_id: str) -> AbstractAsyncContextManager[LedgerSession]:
        """Lock the device for one transaction."""
        return self._session(tenant_id, device_id)

    async def head(self, device_id: str) -> int:
        """Committed head without locking."""
        async with pg_errors("read head"), self._pool.acquire() as connection:
            value = await connection.fetchval(self._sql["head"], device_id)
        return int(value) if value is not None else 0

    async def head_hash(self, device_id: str) -> bytes | None:
        """Chain hash at the committed head."""
        async with pg_errors("read head hash"), self._pool.acquire() as connection:
            value = await connection.fetchval(self._sql["head_hash"], device_id)
        return _bytes(value)
