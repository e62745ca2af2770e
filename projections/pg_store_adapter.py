"""`ProjectionStore` on PostgreSQL: one transaction per batch, bulk statements over arrays (`unnest`).

Order inside the transaction, and why:
1. offsets compare-and-set first — it row-locks the partitions' offset rows, so a second consumer of the
   same partition waits here and then fails the compare (FencedError) instead of racing further;
2. dedup rows (redeliveries dropped, replayed seqs returned uncommitted);
3. touched entities: placeholder rows inserted, then every touched row locked `FOR UPDATE` in key order,
   so two batches that share an entity (a partner keying by something else) serialise instead of
   overwriting each other's merge; loaded states are merged in Python (`projections.batch.merge_batch`);
4. entity rows, decisions (ON CONFLICT DO NOTHING: the id is deterministic) and outbox rows written.
Bulk writes use `unnest` over arrays; docs/projections.md has the measurements against COPY and executemany.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from keel.errors import FencedError, TransientError
from projections.batch import (
    BatchOutcome,
    DedupSplit,
    EntityKey,
    ProjectionBatch,
    SourcedEvent,
    TopicPartition,
    merge_batch,
    rejection_entries,
    split_by_dedup,
    stamp_text,
)
from projections.chain_heads_pg_adapter import PgChainBook
from projections.conflict_rules import ConflictRules, Decision, EntityState
from projections.decisions import DecisionRecord
from projections.entity_tables import EntityTable, entity_tables
from projections.field_encryption import FieldCipher, default_field_cipher
from projections.outbox import OutboxEntry, outbox_channel
from projections.pg_adapter import Connection, Pool, connect_pool, pg_errors
from projections.sql_migrations import in_schema, quote_ident
from projections.state_codec import state_from_json, state_to_json
from projections.store import VisibleRow

__all__ = ["PgProjectionStore"]


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_LOAD_OFFSETS = (
    "SELECT topic, partition, next_offset FROM {schema}.consumer_offsets WHERE group_id = $1 "
    "AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::integer[]))"
)
_MOVE_OFFSETS = (
    "UPDATE {schema}.consumer_offsets AS o SET next_offset = a.next_offset, updated_at = now() "
    "FROM unnest($2::text[], $3::integer[], $4::bigint[], $5::bigint[]) AS a(topic, partition, expected, next_offset) "
    "WHERE o.group_id = $1 AND o.topic = a.topic AND o.partition = a.partition AND o.next_offset = a.expected"
)
_FIRST_OFFSETS = (
    "INSERT INTO {schema}.consumer_offsets (group_id, topic, partition, next_offset) "
    "SELECT $1, * FROM unnest($2::text[], $3::integer[], $4::bigint[]) ON CONFLICT DO NOTHING"
)
_KNOWN_OPS = (
    "SELECT device_id, device_seq, event_id FROM {schema}.applied_ops "
    "WHERE (device_id, device_seq) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))"
)
_RECORD_OPS = (
    "INSERT INTO {schema}.applied_ops (device_id, device_seq, event_id, tenant_id, entity_type, entity_id, topic, "
    "partition, log_offset) SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], "
    "$6::text[], $7::text[], $8::integer[], $9::bigint[]) ON CONFLICT DO NOTHING"
)
_INSERT_DECISIONS = (
    "INSERT INTO {schema}.conflict_decisions (decision_id, tenant_id, entity_type, entity_id, field, rule, "
    "winner_event_id, winner_device_id, winner_value, loser_event_id, loser_device_id, loser_value, explanation) "
    "SELECT i, t, et, ei, f, r, we, wd, wv::jsonb, le, ld, lv::jsonb, x FROM unnest($1::text[], $2::text[], "
    "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], "
    "$12::text[], $13::text[]) AS u(i, t, et, ei, f, r, we, wd, wv, le, ld, lv, x) ON CONFLICT DO NOTHING "
    "RETURNING decision_id"
)
# The same round trip notifies `outbox_channel(schema)` once per tenant: PostgreSQL delivers notifications
# at commit (none if the transaction rolls back), so a gateway LISTENing wakes that tenant's devices at once.
_INSERT_OUTBOX = (
    "WITH inserted AS (INSERT INTO {schema}.outbox (tenant_id, device_id, kind, entity_type, entity_id, event_id, "
    "body, trace) SELECT t, d, k, et, ei, ev, b, tr FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
    "$5::text[], $6::text[], $7::jsonb[], $8::text[]) WITH ORDINALITY AS u(t, d, k, et, ei, ev, b, tr, n) ORDER BY n "
    "RETURNING tenant_id) SELECT pg_notify($9, tenant_id) FROM (SELECT DISTINCT tenant_id FROM inserted) AS grown"
)
# resolved_by mirrors projections.decisions.resolutions (the contract test checks they agree).
_DECISIONS = (
    "SELECT d.*, (extract(epoch FROM d.decided_at) * 1000)::bigint AS decided_ms, CASE WHEN d.rule = "
    "'manual-override' THEN NULL ELSE (SELECT m.winner_event_id FROM {schema}.conflict_decisions m "
    "WHERE m.rule = 'manual-override' AND m.loser_event_id IN (d.winner_event_id, d.loser_event_id) "
    "AND m.tenant_id = d.tenant_id AND m.entity_type = d.entity_type AND m.entity_id = d.entity_id "
    "AND (m.field = d.field OR m.field = '*' OR d.field = '*') ORDER BY m.decision_id LIMIT 1) END AS resolved_by "
    "FROM {schema}.conflict_decisions d "
)
_LIST_DECISIONS = _DECISIONS + (
    "WHERE ($1::text IS NULL OR d.tenant_id = $1) AND ($2::text IS NULL OR d.entity_id = $2) "
    "ORDER BY d.decided_at DESC, d.decision_id LIMIT $3"
)
_ONE_DECISION = _DECISIONS + "WHERE starts_with(d.decision_id, $1) LIMIT 2"


def _affected(status: str) -> int:
    """Row count of a command status such as 'UPDATE 3' or 'INSERT 0 5'."""
    return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True)
class _TableSql:
    """Statements of one entity table, built once (identifiers only through `quote_ident`, hence the S608 noqas)."""

    schema: str
    table: EntityTable

    @cached_property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table.name)}"

    @cached_property
    def placeholders(self) -> str:
        return (
            f"INSERT INTO {self.qualified} (tenant_id, entity_id) "  # noqa: S608
            "SELECT t, e FROM unnest($1::text[], $2::text[]) AS k(t, e) ORDER BY t, e ON CONFLICT DO NOTHING"
        )

    @cached_property
    def lock(self) -> str:
        return (
            f"SELECT tenant_id, entity_id, state FROM {self.qualified} "  # noqa: S608
            "WHERE (tenant_id, entity_id) IN (SELECT * FROM unnest($1::text[], $2::text[])) "
            "ORDER BY tenant_id, entity_id FOR UPDATE"
        )

    @cached_property
    def update(self) -> str:
        # One statement run per row with executemany (pipelined: one round trip); docs/projections.md has the
        # measurements against unnest arrays and COPY through a staging table.
        columns = self.table.columns
        sets = [f"{quote_ident(c.name)} = ${i + 3}" for i, c in enumerate(columns)]
        base = len(columns) + 3
        sets += [
            f"deleted = ${base}",
            f"clock = ${base + 1}",
            f"origin_device = ${base + 2}",
            f"last_event_id = ${base + 3}",
            f"state = ${base + 4}",
            "last_tx = pg_current_xact_id()",
            "updated_at = now()",
        ]
        return (
            f"UPDATE {self.qualified} SET {', '.join(sets)} "  # noqa: S608
            "WHERE tenant_id = $1 AND entity_id = $2"
        )

    @cached_property
    def state(self) -> str:
        return f"SELECT state FROM {self.qualified} WHERE tenant_id = $1 AND entity_id = $2"  # noqa: S608

    @cached_property
    def states(self) -> str:
        return (
            f"SELECT entity_id, state FROM {self.qualified} "  # noqa: S608
            "WHERE tenant_id = $1 AND entity_id = ANY($2::text[]) AND state IS NOT NULL"
        )

    @cached_property
    def visible(self) -> str:
        columns = ", ".join(quote_ident(c.name) for c in self.table.columns)
        return (
            f"SELECT tenant_id, entity_id, {columns} FROM {self.qualified} "  # noqa: S608
            "WHERE NOT deleted AND state IS NOT NULL AND ($1::text IS NULL OR tenant_id = $1) "
            "ORDER BY tenant_id, entity_id"
        )

    def update_rows(self, states: Sequence[EntityState], cipher: FieldCipher) -> list[tuple[Any, ...]]:
        defaults = self.table.defaults()
        rows = []
        for state in states:
            visible = state.visible(defaults)
            newest = state.newest_stamp
            where = (state.tenant_id, self.table.entity, state.entity_id)
            rows.append(
                (
                    state.tenant_id,
                    state.entity_id,
                    *self.table.row_values(cipher.seal_payload(visible, *where)),  # sensitive fields sealed
                    visible is None,
                    stamp_text(newest),
                    newest.device_id if newest else None,
                    newest.event_id if newest else None,
                    cipher.seal_state(state_to_json(state), *where),
                )
            )
        return rows


class _Replayed(Exception):  # noqa: N818 - control flow only: leaves the transaction so it rolls back
    def __init__(self, split: DedupSplit) -> None:
        self.split = split


class _Refused(Exception):  # noqa: N818 - control flow only, like _Replayed
    def __init__(self, refused: list[tuple[SourcedEvent, str]]) -> None:
        self.refused = refused


class PgProjectionStore:
    """Projections in one PostgreSQL schema (created by `projections.sql_migrator_adapter.migrate`)."""

    def __init__(
        self,
        pool: Pool,
        schema: str,
        *,
        rules: ConflictRules | None = None,
        owns_pool: bool = False,
        cipher: FieldCipher | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._before_commit = before_commit  # test failpoint: runs inside the transaction, writes done, pre-COMMIT
        self._cipher = cipher if cipher is not None else default_field_cipher()  # sensitive payload fields
        self.schema = schema
        self._sql = {
            "load_offsets": in_schema(_LOAD_OFFSETS, schema),
            "move_offsets": in_schema(_MOVE_OFFSETS, schema),
            "first_offsets": in_schema(_FIRST_OFFSETS, schema),
            "known_ops": in_schema(_KNOWN_OPS, schema),
            "record_ops": in_schema(_RECORD_OPS, schema),
            "insert_decisions": in_schema(_INSERT_DECISIONS, schema),
            "insert_outbox": in_schema(_INSERT_OUTBOX, schema),
            "list_decisions": in_schema(_LIST_DECISIONS, schema),
            "one_decision": in_schema(_ONE_DECISION, schema),
        }
        self._channel = outbox_channel(schema)  # notified with each tenant whose outbox grew, at commit
        self._rules = rules or ConflictRules()
        self._owns_pool = owns_pool
        self._tables = {name: _TableSql(schema, table) for name, table in entity_tables().items()}
        self._chains = PgChainBook(schema)

    @classmethod
    async def connect(
        cls, dsn: str, schema: str, *, rules: ConflictRules | None = None, max_size: int = 4
    ) -> PgProjectionStore:
        """A store with a pool of its own (closed by `close`)."""
        pool = await connect_pool(dsn, max_size=max_size)
        return cls(pool, schema, rules=rules, owns_pool=True)

    @property
    def pool(self) -> Pool:
        """The connection pool (shared with the outbox and admin adapters)."""
        return self._pool

    def _table(self, entity_type: str) -> _TableSql:
        return self._tables[entity_type]

    async def load_offsets(self, group_id: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Stored next offsets."""
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        async with pg_errors("load offsets"), self._pool.acquire() as connection:
            rows = await connection.fetch(
                self._sql["load_offsets"],
                group_id,
                [tp.topic for tp in wanted],
                [tp.partition for tp in wanted],
            )
        return {TopicPartition(row["topic"], row["partition"]): int(row["next_offset"]) for row in rows}

    async def apply_batch(self, batch: ProjectionBatch) -> BatchOutcome:
        """Commit the batch in one transaction (module docstring); cancellable at any point."""
        try:
            async with pg_errors("apply batch"), self._pool.acquire() as connection:
                # Cancelling asyncpg inside a pipelined statement (executemany) leaves the server waiting for
                # the rest of the pipeline while asyncpg waits for the cancellation's answer: the task hangs
                # until the command timeout, the session holding its locks, and then fails with a TimeoutError
                # instead of ending cancelled (found by `keel chaos run R5`). So the work runs shielded and a
                # cancellation closes the socket instead: PostgreSQL rolls the transaction back at once.
                work = asyncio.ensure_future(self._apply_in_transaction(connection, batch))
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:
                    connection.terminate()
                    with contextlib.suppress(BaseException):  # it fails fast now: the connection is closed
                        await work
                    raise
        except _Replayed as replayed:
            return BatchOutcome(committed=False, replayed=replayed.split.replayed)
        except _Refused as refused:
            return BatchOutcome(committed=False, refused=tuple(refused.refused))

    async def _apply_in_transaction(self, connection: Connection, batch: ProjectionBatch) -> BatchOutcome:
        async with connection.transaction():
            outcome = await self._apply(connection, batch)
            if self._before_commit is not None:
                self._before_commit()
            return outcome

    async def _apply(self, connection: Connection, batch: ProjectionBatch) -> BatchOutcome:
        await self._advance_offsets(connection, batch)
        split = split_by_dedup(batch.events, await self._known_ops(connection, batch.events))
        if split.replayed:
            raise _Replayed(split)
        # Signed devices' chain links, checked and recorded before any entity row is locked (docs/security.md).
        refused = await self._chains.judge_and_record(connection, [(s, s.chain) for s in split.fresh if s.chain])
        if refused:
            raise _Refused(refused)
        await self._record_ops(connection, split.fresh)
        merged = merge_batch(await self._lock_states(connection, split.fresh), split.fresh, self._rules)
        by_type: dict[str, list[EntityState]] = defaultdict(list)
        for (entity_type, _, _), state in sorted(merged.states.items()):
            by_type[entity_type].append(state)
        for entity_type, states in by_type.items():
            table = self._table(entity_type)
            await connection.executemany(table.update, table.update_rows(states, self._cipher))
        inserted = await self._insert_decisions(connection, merged.decisions)
        await self._insert_outbox(connection, [*merged.outbox, *rejection_entries(batch.rejections)])
        return BatchOutcome(
            committed=True,
            applied=len(split.fresh),
            duplicates=len(split.duplicates),
            decisions=len(inserted),
            conflicts=merged.conflict_notes(inserted),
        )

    async def _advance_offsets(self, connection: Connection, batch: ProjectionBatch) -> None:
        known = [a for a in sorted(batch.advances, key=lambda a: a.partition) if a.expected is not None]
        first = [a for a in sorted(batch.advances, key=lambda a: a.partition) if a.expected is None]
        moved = 0
        if known:
            status = await connection.execute(
                self._sql["move_offsets"],
                batch.group_id,
                [a.partition.topic for a in known],
                [a.partition.partition for a in known],
                [a.expected for a in known],
                [a.next_offset for a in known],
            )
            moved += _affected(status)
        if first:
            status = await connection.execute(
                self._sql["first_offsets"],
                batch.group_id,
                [a.partition.topic for a in first],
                [a.partition.partition for a in first],
                [a.next_offset for a in first],
            )
            moved += _affected(status)
        if moved != len(batch.advances):
            raise FencedError(
                f"group {batch.group_id}: {len(batch.advances) - moved} of {len(batch.advances)} partitions moved "
                "since this consumer read them: another consumer committed first"
            )

    async def _known_ops(self, connection: Connection, events: Sequence[SourcedEvent]) -> dict[tuple[str, int], str]:
        if not events:
            return {}
        rows = await connection.fetch(
            self._sql["known_ops"],
            [s.event.device_id for s in events],
            [s.event.device_seq for s in events],
        )
        return {(row["device_id"], int(row["device_seq"])): row["event_id"] for row in rows}

    async def _record_ops(self, connection: Connection, fresh: Sequence[SourcedEvent]) -> None:
        if not fresh:
            return
        status = await connection.execute(
            self._sql["record_ops"],
            [s.event.device_id for s in fresh],
            [s.event.device_seq for s in fresh],
            [s.event.event_id for s in fresh],
            [s.event.tenant_id for s in fresh],
            [s.event.entity_type for s in fresh],
            [s.event.entity_id for s in fresh],
            [s.position.topic for s in fresh],
            [s.position.partition for s in fresh],
            [s.position.offset for s in fresh],
        )
        if _affected(status) != len(fresh):
            # Another partition's batch recorded the same (device_id, device_seq) since we looked: retry, and
            # the next attempt classifies it properly.
            raise TransientError("a concurrent batch recorded the same (device_id, device_seq); retrying the batch")

    async def _lock_states(
        self, connection: Connection, fresh: Sequence[SourcedEvent]
    ) -> dict[EntityKey, EntityState | None]:
        keys: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for sourced in fresh:
            keys[sourced.event.entity_type].add((sourced.event.tenant_id, sourced.event.entity_id))
        states: dict[EntityKey, EntityState | None] = {}
        for entity_type in sorted(keys):
            table = self._table(entity_type)
            wanted = sorted(keys[entity_type])
            tenants, ids = [k[0] for k in wanted], [k[1] for k in wanted]
            await connection.execute(table.placeholders, tenants, ids)
            for row in await connection.fetch(table.lock, tenants, ids):
                raw = row["state"]
                key = (entity_type, row["tenant_id"], row["entity_id"])
                states[key] = None if raw is None else self._state(row["tenant_id"], entity_type, row["entity_id"], raw)
        return states

    async def _insert_decisions(self, connection: Connection, decisions: Sequence[Decision]) -> list[str]:
        """Ids of the decisions inserted now (those recorded before are left as they are)."""
        if not decisions:
            return []
        rows = await connection.fetch(
            self._sql["insert_decisions"],
            [d.decision_id for d in decisions],
            [d.tenant_id for d in decisions],
            [d.entity_type for d in decisions],
            [d.entity_id for d in decisions],
            [d.field for d in decisions],
            [d.rule for d in decisions],
            [d.winner_event_id for d in decisions],
            [d.winner_device_id for d in decisions],
            [_json_text(self._decided_value(d, d.winner_value, seal=True)) for d in decisions],
            [d.loser_event_id for d in decisions],
            [d.loser_device_id for d in decisions],
            [_json_text(self._decided_value(d, d.loser_value, seal=True)) for d in decisions],
            [d.explanation for d in decisions],
        )
        return [str(row["decision_id"]) for row in rows]

    async def _insert_outbox(self, connection: Connection, entries: Sequence[OutboxEntry]) -> None:
        if not entries:
            return
        await connection.execute(
            self._sql["insert_outbox"],
            [e.tenant_id for e in entries],
            [e.device_id for e in entries],
            [e.kind.value for e in entries],
            [e.entity_type for e in entries],
            [e.entity_id for e in entries],
            [e.event_id for e in entries],
            [self._cipher.seal_body(e.body) for e in entries],
            [e.trace for e in entries],
            self._channel,
        )

    async def entity_state(self, entity_type: str, tenant_id: str, entity_id: str) -> EntityState | None:
        """One merged state."""
        async with pg_errors("read state"), self._pool.acquire() as connection:
            raw = await connection.fetchval(self._table(entity_type).state, tenant_id, entity_id)
        return None if raw is None else self._state(tenant_id, entity_type, entity_id, raw)

    async def entity_states(
        self, entity_type: str, tenant_id: str, entity_ids: Sequence[str]
    ) -> dict[str, EntityState]:
        """Some merged states of one tenant in one query (the primary key's index, `= ANY` of the ids)."""
        if not entity_ids:
            return {}
        async with pg_errors("read states"), self._pool.acquire() as connection:
            rows = await connection.fetch(self._table(entity_type).states, tenant_id, list(dict.fromkeys(entity_ids)))
        return {row["entity_id"]: self._state(tenant_id, entity_type, row["entity_id"], row["state"]) for row in rows}

    async def visible_rows(self, entity_type: str, tenant_id: str | None = None) -> list[VisibleRow]:
        """Live entities read back from the typed columns, in payload form."""
        async with pg_errors("read rows"), self._pool.acquire() as connection:
            return await self.visible_rows_on(connection, entity_type, tenant_id)

    async def visible_rows_on(
        self, connection: Connection, entity_type: str, tenant_id: str | None = None
    ) -> list[VisibleRow]:
        """`visible_rows` on a given connection (inside the caller's transaction and snapshot)."""
        table = self._table(entity_type)
        rows = await connection.fetch(table.visible, tenant_id)
        return [
            (
                row["tenant_id"],
                row["entity_id"],
                self._cipher.open_payload(
                    table.table.payload_from_row(row), row["tenant_id"], entity_type, row["entity_id"]
                ),
            )
            for row in rows
        ]

    def _state(self, tenant_id: str, entity_type: str, entity_id: str, raw: Any) -> EntityState:
        """A stored state, its sensitive values opened."""
        opened = self._cipher.open_state(raw, tenant_id, entity_type, entity_id)
        return state_from_json(tenant_id, entity_type, entity_id, opened)

    def _decided_value(self, decision: Decision, value: Any, *, seal: bool) -> Any:
        """A decision's winner or loser value, sealed (or opened) when its field is sensitive."""
        if decision.field not in self._cipher.fields_of(decision.entity_type):
            return value
        where = f"{decision.tenant_id}|{decision.entity_type}|{decision.entity_id}|{decision.field}"
        return self._cipher.seal(value, where) if seal else self._cipher.open(value, where)

    def _record(self, row: Any) -> DecisionRecord:
        decision = Decision(
            **{name: row[name] for name in Decision.__dataclass_fields__}  # columns are named like the fields
        )
        opened = replace(
            decision,
            winner_value=self._decided_value(decision, decision.winner_value, seal=False),
            loser_value=self._decided_value(decision, decision.loser_value, seal=False),
        )
        return DecisionRecord(opened, int(row["decided_ms"]), row["resolved_by"])

    async def decisions(
        self, *, tenant_id: str | None = None, entity_id: str | None = None, limit: int = 100
    ) -> list[DecisionRecord]:
        """Decisions, newest first."""
        async with pg_errors("read decisions"), self._pool.acquire() as connection:
            rows = await connection.fetch(
                self._sql["list_decisions"],
                tenant_id,
                entity_id,
                limit,
            )
        return [self._record(row) for row in rows]

    async def decision(self, decision_id: str) -> DecisionRecord | None:
        """One decision by id or unique prefix."""
        async with pg_errors("read decision"), self._pool.acquire() as connection:
            rows = await connection.fetch(self._sql["one_decision"], decision_id)
        return self._record(rows[0]) if len(rows) == 1 else None

    async def close(self) -> None:
        """Close the pool if this store created it."""
        if self._owns_pool:
            await self._pool.close()
