"""Chain links and heads in PostgreSQL (`chain_links`, `chain_heads`; projections/sql/202_chain_heads.sql).

Runs inside the batch's transaction (`PgProjectionStore`), before the entity rows are locked: the heads of
the batch's devices are locked `FOR UPDATE` in device order, so two batches carrying ops of one device
(different partitions) judge their links one after the other and never both miss a contradiction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, TypeVar

from projections.chain_heads import ChainEntry, ChainHead, advance, judge, neighbour_keys
from projections.pg_adapter import Connection
from projections.sql_migrations import in_schema
from schemas.op_chain import OpLink

__all__ = ["PgChainBook"]

Owner = TypeVar("Owner")

_SQL = {
    "placeholders": "INSERT INTO {schema}.chain_heads (device_id, tenant_id, head_seq) "
    "SELECT d, t, 0 FROM unnest($1::text[], $2::text[]) AS u(d, t) ORDER BY d ON CONFLICT DO NOTHING",
    "lock": "SELECT device_id, tenant_id, head_seq, head_hash FROM {schema}.chain_heads "
    "WHERE device_id = ANY($1::text[]) ORDER BY device_id FOR UPDATE",
    "neighbours": "SELECT device_id, seq, tenant_id, kind, prev_hash, op_hash, event_id FROM {schema}.chain_links "
    "WHERE (device_id, seq) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))",
    "beyond": "SELECT l.device_id, l.seq, l.tenant_id, l.kind, l.prev_hash, l.op_hash, l.event_id "
    "FROM {schema}.chain_links l JOIN {schema}.chain_heads h ON h.device_id = l.device_id "
    "WHERE l.device_id = ANY($1::text[]) AND l.seq > h.head_seq",
    "insert": "INSERT INTO {schema}.chain_links (device_id, seq, tenant_id, kind, prev_hash, op_hash, event_id) "
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bytea[], $6::bytea[], $7::text[])",
    "move": "UPDATE {schema}.chain_heads AS h SET head_seq = u.s, head_hash = u.h, updated_at = now() "
    "FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS u(d, s, h) WHERE h.device_id = u.d",
    "heads": "SELECT device_id, tenant_id, head_seq, head_hash FROM {schema}.chain_heads "
    "WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY device_id",
}


def _bytes(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


def _entry(row: Any) -> ChainEntry:
    link = OpLink(row["device_id"], int(row["seq"]), _bytes(row["prev_hash"]), _bytes(row["op_hash"]))
    return ChainEntry(row["tenant_id"], link, row["kind"], row["event_id"])


def _head(row: Any) -> ChainHead:
    return ChainHead(row["tenant_id"], row["device_id"], int(row["head_seq"]), _bytes(row["head_hash"]))


class PgChainBook:
    """Judges and records chain links on the caller's connection (inside its transaction)."""

    def __init__(self, schema: str) -> None:
        self._sql = {name: in_schema(text, schema) for name, text in _SQL.items()}

    async def judge_and_record(
        self, connection: Connection, groups: Sequence[tuple[Owner, Sequence[ChainEntry]]]
    ) -> list[tuple[Owner, str]]:
        """Refused owners (record nothing then: the caller rolls back), else record the links and move heads."""
        entries = [entry for _, group in groups for entry in group]
        if not entries:
            return []
        tenants = {entry.link.device_id: entry.tenant_id for entry in entries}
        devices = sorted(tenants)
        await connection.execute(self._sql["placeholders"], devices, [tenants[d] for d in devices])
        heads = {row["device_id"]: _head(row) for row in await connection.fetch(self._sql["lock"], devices)}
        wanted = neighbour_keys(entries)
        known = {
            entry.key: entry
            for entry in map(
                _entry,
                [
                    *await connection.fetch(self._sql["neighbours"], [k[0] for k in wanted], [k[1] for k in wanted]),
                    *await connection.fetch(self._sql["beyond"], devices),
                ],
            )
        }
        judgement = judge(groups, known)
        if judgement.refused:
            return judgement.refused
        fresh = judgement.accepted
        if fresh:
            await connection.execute(
                self._sql["insert"],
                [e.link.device_id for e in fresh],
                [e.link.seq for e in fresh],
                [e.tenant_id for e in fresh],
                [e.kind for e in fresh],
                [e.link.prev_hash for e in fresh],
                [e.link.hash for e in fresh],
                [e.event_id for e in fresh],
            )
        by_device: dict[str, dict[int, ChainEntry]] = defaultdict(dict)
        for entry in [*known.values(), *fresh]:
            by_device[entry.link.device_id][entry.link.seq] = entry
        moved = [advance(heads[d], by_device[d]) for d in devices]
        moved = [head for head in moved if head != heads[head.device_id]]
        if moved:
            await connection.execute(
                self._sql["move"],
                [h.device_id for h in moved],
                [h.head_seq for h in moved],
                [h.head_hash for h in moved],
            )
        return []

    async def heads(self, connection: Connection, tenant_id: str | None = None) -> list[ChainHead]:
        """Every device's head (of one tenant), by device id."""
        return [_head(row) for row in await connection.fetch(self._sql["heads"], tenant_id)]
