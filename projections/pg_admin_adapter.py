"""Maintenance of a projection schema: snapshots, table swaps (rebuild, rollback), tombstone compaction.

A swap moves rebuilt entity tables into the live schema in one transaction, together with the rows that
must travel with them — the decisions of those entity types, the projector's offsets and dedup rows of
their topics — and keeps what it replaces in an archive schema of the same shape, so a swap can be undone
by swapping the archive back. It locks the offsets table first: a running projector's next batch waits,
then fails its offset compare-and-set and re-seeks to the swapped-in offsets (docs/runbooks/).
Devices of the affected tenants get a `resync` outbox row: their state may differ from the new tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keel.errors import ConfigurationError
from projections.batch import TopicPartition
from projections.digest import digests_by_tenant
from projections.pg_adapter import Connection, Pool, pg_errors
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import in_schema, quote_ident

__all__ = ["PgAdmin", "PgOperatorSequence", "SnapshotInfo", "TableDigest"]

# Rows that travel with entity tables: (table, filter, what the filter's $1, $2 are).
_COMPANIONS = (
    ("conflict_decisions", "entity_type = ANY($1::text[])", ("entities",)),
    ("consumer_offsets", "group_id = $1 AND topic = ANY($2::text[])", ("group", "topics")),
    ("applied_ops", "topic = ANY($1::text[])", ("topics",)),
)
_COMPACT = (
    "UPDATE {schema}.{table} AS t SET state = jsonb_build_object('f', '{}'::jsonb, 'd', t.state->'d', 'h', "
    "'[]'::jsonb) WHERE t.deleted AND t.state IS NOT NULL AND t.state->'d' IS NOT NULL "
    "AND (t.state->'f' <> '{}'::jsonb OR jsonb_array_length(t.state->'h') > 0) "
    "AND t.updated_at < now() - make_interval(secs => $1) "
    # No device of the tenant may still stand before the last feed row of the transaction that deleted it.
    "AND NOT EXISTS (SELECT 1 FROM {schema}.device_cursors c WHERE c.tenant_id = t.tenant_id "
    "AND (c.cursor_tx < t.last_tx OR (c.cursor_tx = t.last_tx AND c.cursor_pos < COALESCE("
    "(SELECT max(o.pos) FROM {schema}.outbox o WHERE o.tenant_id = t.tenant_id AND o.tx = t.last_tx), 0))))"
)
_RESYNC = (
    "INSERT INTO {schema}.outbox (tenant_id, device_id, kind, body) SELECT tenant_id, NULL, 'resync', "
    "jsonb_build_object('reason', $2::text, 'entity_types', to_jsonb($1::text[])) FROM "
    "(SELECT DISTINCT tenant_id FROM {schema}.applied_ops WHERE entity_type = ANY($1::text[])) AS tenants "
    "ORDER BY tenant_id"
)


@dataclass(frozen=True)
class TableDigest:
    """The digest of one entity table for one tenant."""

    entity_type: str
    tenant_id: str
    count: int
    digest: str


@dataclass(frozen=True)
class SnapshotInfo:
    """A stored snapshot: where its tables are and the offsets they correspond to."""

    name: str
    schema_name: str
    group_id: str
    entities: tuple[str, ...]
    offsets: dict[TopicPartition, int]
    digests: tuple[TableDigest, ...]


class PgAdmin:
    """Administrative operations on projection schemas sharing one pool."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def schema_exists(self, schema: str) -> bool:
        """Whether a schema exists."""
        async with pg_errors("schema exists"), self._pool.acquire() as connection:
            found = await connection.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
        return found is not None

    async def drop_schema(self, schema: str) -> None:
        """Drop a schema and everything in it (shadow or archive schemas; never call it on a live one)."""
        async with pg_errors("drop schema"), self._pool.acquire() as connection:
            await connection.execute(in_schema("DROP SCHEMA IF EXISTS {schema} CASCADE", schema))

    async def next_operator_seq(self, schema: str) -> int:
        """The next operator sequence number of a schema."""
        async with pg_errors("operator seq"), self._pool.acquire() as connection:
            return int(await connection.fetchval("SELECT nextval($1::regclass)", f"{quote_ident(schema)}.operator_seq"))

    async def offsets(self, schema: str, group_id: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """Stored offsets of a group for the given topics."""
        async with pg_errors("read offsets"), self._pool.acquire() as connection:
            rows = await connection.fetch(
                in_schema(
                    "SELECT topic, partition, next_offset FROM {schema}.consumer_offsets "
                    "WHERE group_id = $1 AND topic = ANY($2::text[])",
                    schema,
                ),
                group_id,
                list(topics),
            )
        return {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}

    async def digests(self, schema: str, entities: Sequence[str], *, tenant_id: str | None = None) -> list[TableDigest]:
        """Digest per entity table and tenant, read in one snapshot."""
        store = PgProjectionStore(self._pool, schema)
        found: list[TableDigest] = []
        async with (
            pg_errors("digests"),
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            for entity in entities:
                rows = await store.visible_rows_on(connection, entity, tenant_id)
                for tenant, (count, digest) in digests_by_tenant(rows).items():
                    found.append(TableDigest(entity, tenant, count, digest))
        return found

    async def digests_at(
        self, schema: str, entities: Sequence[str], group_id: str, topics: Sequence[str]
    ) -> tuple[dict[TopicPartition, int], list[TableDigest]]:
        """Offsets and digests read in the same snapshot (what the digests correspond to)."""
        store = PgProjectionStore(self._pool, schema)
        found: list[TableDigest] = []
        async with (
            pg_errors("digests"),
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await connection.fetch(
                in_schema(
                    "SELECT topic, partition, next_offset FROM {schema}.consumer_offsets "
                    "WHERE group_id = $1 AND topic = ANY($2::text[])",
                    schema,
                ),
                group_id,
                list(topics),
            )
            offsets = {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
            for entity in entities:
                visible = await store.visible_rows_on(connection, entity, None)
                for tenant, (count, digest) in digests_by_tenant(visible).items():
                    found.append(TableDigest(entity, tenant, count, digest))
        return offsets, found

    async def _columns(self, connection: Connection, schema: str, table: str) -> list[str]:
        rows = await connection.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 "
            "ORDER BY ordinal_position",
            schema,
            table,
        )
        return [str(r["column_name"]) for r in rows]

    async def _copy_rows(
        self, connection: Connection, source: str, target: str, table: str, *, where: str, args: Sequence[Any]
    ) -> None:
        """Copy the matching rows of `table` from one schema to another (shared columns only)."""
        shared = [
            c
            for c in await self._columns(connection, target, table)
            if c in await self._columns(connection, source, table)
        ]
        names = ", ".join(quote_ident(c) for c in shared)
        sql = (
            f"INSERT INTO {quote_ident(target)}.{quote_ident(table)} ({names}) "  # noqa: S608 - quoted identifiers
            f"SELECT {names} FROM {quote_ident(source)}.{quote_ident(table)} WHERE {where}"
        )
        await connection.execute(sql, *args)

    async def snapshot(
        self, schema: str, name: str, group_id: str, entities: Sequence[str], topics: Sequence[str]
    ) -> SnapshotInfo:
        """Copy the entity tables and their companion rows, with their offsets and digests, in one snapshot."""
        target = f"{schema}_snap_{name}"
        quote_ident(target)
        store = PgProjectionStore(self._pool, schema)
        async with (
            pg_errors("snapshot"),
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read"),
        ):
            if await connection.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", target):
                raise ConfigurationError(f"snapshot schema {target} already exists; pick another --name")
            await connection.execute(f"CREATE SCHEMA {quote_ident(target)}")
            s, t = quote_ident(schema), quote_ident(target)
            digests: list[TableDigest] = []
            for entity in entities:
                table = quote_ident(entity)
                await connection.execute(f"CREATE TABLE {t}.{table} AS TABLE {s}.{table}")
                visible = await store.visible_rows_on(connection, entity, None)
                for tenant, (count, digest) in digests_by_tenant(visible).items():
                    digests.append(TableDigest(entity, tenant, count, digest))
            values = {"entities": list(entities), "topics": list(topics), "group": group_id}
            for table_name, where, names in _COMPANIONS:
                table = quote_ident(table_name)
                await connection.execute(
                    f"CREATE TABLE {t}.{table} AS SELECT * FROM {s}.{table} WHERE {where}",  # noqa: S608 - quoted
                    *[values[n] for n in names],
                )
            rows = await connection.fetch(
                f"SELECT topic, partition, next_offset FROM {t}.consumer_offsets"  # noqa: S608 - quoted
            )
            offsets = {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
            await connection.execute(
                in_schema(
                    "INSERT INTO {schema}.projection_snapshots (name, schema_name, group_id, entities, offsets, "
                    "digests) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)",
                    schema,
                ),
                name,
                target,
                group_id,
                list(entities),
                [[p.topic, p.partition, o] for p, o in sorted(offsets.items())],
                [[d.entity_type, d.tenant_id, d.count, d.digest] for d in digests],
            )
        return SnapshotInfo(name, target, group_id, tuple(entities), offsets, tuple(digests))

    async def snapshots(self, schema: str) -> list[SnapshotInfo]:
        """Stored snapshots, newest first."""
        async with pg_errors("list snapshots"), self._pool.acquire() as connection:
            rows = await connection.fetch(
                in_schema("SELECT * FROM {schema}.projection_snapshots ORDER BY created_at DESC", schema)
            )
        return [
            SnapshotInfo(
                r["name"],
                r["schema_name"],
                r["group_id"],
                tuple(r["entities"]),
                {TopicPartition(t, p): int(o) for t, p, o in r["offsets"]},
                tuple(TableDigest(e, tn, int(c), d) for e, tn, c, d in r["digests"]),
            )
            for r in rows
        ]

    async def restore_snapshot(
        self, snapshot: SnapshotInfo, target: str, entities: Sequence[str], topics: Sequence[str]
    ) -> None:
        """Fill a freshly migrated schema with a snapshot's rows (the start of a rebuild from a snapshot)."""
        missing = sorted(set(entities) - set(snapshot.entities))
        if missing:
            raise ConfigurationError(f"snapshot {snapshot.name} does not hold {', '.join(missing)}")
        values = {"entities": list(entities), "topics": list(topics), "group": snapshot.group_id}
        async with pg_errors("restore snapshot"), self._pool.acquire() as connection, connection.transaction():
            for entity in entities:
                await self._copy_rows(connection, snapshot.schema_name, target, entity, where="true", args=())
            for table_name, where, names in _COMPANIONS:
                await self._copy_rows(
                    connection, snapshot.schema_name, target, table_name, where=where, args=[values[n] for n in names]
                )

    async def swap(
        self, live: str, source: str, *, entities: Sequence[str], topics: Sequence[str], group_id: str, archive: str
    ) -> None:
        """Move `source`'s entity tables (and companion rows) into `live`; what they replace goes to `archive`."""
        quote_ident(archive)
        values = {"entities": list(entities), "topics": list(topics), "group": group_id}
        s_live, s_src, s_arc = quote_ident(live), quote_ident(source), quote_ident(archive)
        async with pg_errors("swap"), self._pool.acquire() as connection, connection.transaction():
            # The offsets table first: a running projector's next batch waits here, then finds its offsets
            # moved (compare-and-set) and re-seeks, instead of writing between the renames.
            await connection.execute(f"LOCK TABLE {s_live}.consumer_offsets IN EXCLUSIVE MODE")
            if await connection.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", archive):
                raise ConfigurationError(f"archive schema {archive} already exists")
            await connection.execute(f"CREATE SCHEMA {s_arc}")
            for entity in entities:
                table = quote_ident(entity)
                if not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{s_src}.{table}"):
                    raise ConfigurationError(f"{source} has no table {entity}")
                await connection.execute(f"ALTER TABLE {s_live}.{table} SET SCHEMA {s_arc}")
                await connection.execute(f"ALTER TABLE {s_src}.{table} SET SCHEMA {s_live}")
            for table_name, where, names in _COMPANIONS:
                table = quote_ident(table_name)
                used = [values[n] for n in names]
                await connection.execute(
                    f"CREATE TABLE {s_arc}.{table} AS SELECT * FROM {s_live}.{table} WHERE {where}",  # noqa: S608
                    *used,
                )
                await connection.execute(f"DELETE FROM {s_live}.{table} WHERE {where}", *used)  # noqa: S608
                await self._copy_rows(connection, source, live, table_name, where=where, args=used)
            await connection.execute(in_schema(_RESYNC, live), list(entities), f"projection swapped from {source}")

    async def compact_tombstones(self, schema: str, entities: Sequence[str], retention_s: float) -> int:
        """Reduce deleted entities to their tombstone clock; how many were compacted.

        Only once every device of the tenant has read past the tombstone's transaction and `retention_s` has
        passed, so no device still needs the history.
        """
        total = 0
        async with pg_errors("compact"), self._pool.acquire() as connection:
            for entity in entities:
                sql = in_schema(_COMPACT, schema).replace("{table}", quote_ident(entity))
                status = await connection.execute(sql, retention_s)
                total += int(status.rsplit(" ", 1)[-1])
        return total

    async def tenants(self, schema: str) -> list[str]:
        """Tenants with anything in the outbox or device cursors."""
        async with pg_errors("tenants"), self._pool.acquire() as connection:
            rows = await connection.fetch(
                in_schema(
                    "SELECT tenant_id FROM {schema}.outbox UNION SELECT tenant_id FROM {schema}.device_cursors "
                    "ORDER BY 1",
                    schema,
                )
            )
        return [str(r["tenant_id"]) for r in rows]


class PgOperatorSequence:
    """`projections.overrides.OperatorSequence` on the schema's `operator_seq`."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self._admin = PgAdmin(pool)
        self._schema = schema

    async def next_operator_seq(self) -> int:
        """The next number."""
        return await self._admin.next_operator_seq(self._schema)
