"""Read-only PostgreSQL probe: the projector's and the gateway's tables of one schema, in one read-only transaction.

Each query is bounded so the dashboard can repeat it every few seconds: the throughput timeline covers five
minutes of `applied_ops`, hotspots are top-N, and a device's backlog is counted up to a cap. Tables a
deployment does not have (a projector without a gateway in front) are simply reported as empty.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from deploy.observability.fleet import Backlog, FieldHotspot, Hotspot, PgView, StoredOffset, VersionShare
from keel.errors import ServiceUnavailableError
from projections.pg_adapter import Connection, Pool, connect_pool, pg_errors
from projections.sql_migrations import in_schema

__all__ = ["BACKLOG_CAP", "PgProbe"]

BACKLOG_CAP = 10_000  # a device's backlog is counted up to this many entries
TOP = 10
TIMELINE_BUCKET_S = 10
TIMELINE_WINDOW_S = 300
# Above this many rows (by the planner's estimate) a table is not counted exactly every refresh.
EXACT_COUNT_LIMIT = 1_000_000

_SQL = {
    "offsets": "SELECT topic, partition, next_offset, extract(epoch FROM now() - updated_at)::float8 AS age_s "
    "FROM {schema}.consumer_offsets WHERE group_id = $1 ORDER BY topic, partition",
    "timeline": "SELECT (floor(extract(epoch FROM applied_at) / $1) * $1)::bigint AS bucket, count(*) AS events "
    "FROM {schema}.applied_ops WHERE applied_at > now() - make_interval(secs => $2) GROUP BY 1 ORDER BY 1",
    "hot_entities": "SELECT entity_type, entity_id, count(*) AS conflicts FROM {schema}.conflict_decisions "
    "WHERE rule <> 'manual-override' GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT $1",
    "hot_fields": "SELECT entity_type, field, count(*) AS conflicts FROM {schema}.conflict_decisions "
    "WHERE rule <> 'manual-override' GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT $1",
    "decisions": "SELECT count(*) FROM {schema}.conflict_decisions WHERE rule <> 'manual-override'",
    "versions": "SELECT v.key AS entity_type, v.value::int AS version, count(*) AS devices "
    "FROM {schema}.devices d, jsonb_each_text(d.versions) v GROUP BY 1, 2 ORDER BY 1, 2",
    "devices": "SELECT count(*) FROM {schema}.devices",
    # Rows after a device's cursor that it will read: the tenant's feed plus rows addressed to it.
    "backlog": "SELECT d.tenant_id, d.device_id, (SELECT count(*) FROM (SELECT 1 FROM {schema}.outbox o "
    "WHERE o.tenant_id = d.tenant_id AND (o.device_id IS NULL OR o.device_id = d.device_id) "
    "AND (c.cursor_tx IS NULL OR (o.tx, o.pos) > (c.cursor_tx, c.cursor_pos)) LIMIT $2) AS capped) AS entries "
    "FROM {schema}.devices d LEFT JOIN {schema}.device_cursors c USING (tenant_id, device_id) "
    "ORDER BY entries DESC, d.device_id LIMIT $1",
    "behind": "SELECT count(*) FROM {schema}.devices d LEFT JOIN {schema}.device_cursors c "
    "USING (tenant_id, device_id) WHERE EXISTS (SELECT 1 FROM {schema}.outbox o WHERE o.tenant_id = d.tenant_id "
    "AND (o.device_id IS NULL OR o.device_id = d.device_id) "
    "AND (c.cursor_tx IS NULL OR (o.tx, o.pos) > (c.cursor_tx, c.cursor_pos)))",
}


class PgProbe:
    """Reads one schema's projector and gateway tables."""

    def __init__(self, pool: Pool, schema: str, *, owns_pool: bool = False) -> None:
        self._pool = pool
        self.schema = schema
        self._owns_pool = owns_pool
        self._sql = {name: in_schema(text, schema) for name, text in _SQL.items()}

    @classmethod
    async def connect(cls, dsn: str, schema: str) -> PgProbe:
        """A probe with a small pool of its own (closed by `close`)."""
        pool = await connect_pool(dsn, min_size=1, max_size=2, application_name="keel-observability")
        return cls(pool, schema, owns_pool=True)

    async def close(self) -> None:
        """Close the pool if the probe created it."""
        if self._owns_pool:
            await self._pool.close()

    async def server_version(self) -> str:
        """PostgreSQL's `server_version`."""
        async with pg_errors("server version"), self._pool.acquire() as connection:
            return str(await connection.fetchval("SHOW server_version"))

    async def applied_migrations(self) -> dict[int, str] | None:
        """Version → checksum of the schema's applied SQL migrations; None when the schema has none yet."""
        async with pg_errors("applied migrations"), self._pool.acquire() as connection:
            if not await self._has(connection, "schema_migrations"):
                return None
            rows = await connection.fetch(
                in_schema("SELECT version, checksum FROM {schema}.schema_migrations", self.schema)
            )
        return {int(row["version"]): str(row["checksum"]) for row in rows}

    async def _has(self, connection: Connection, table: str) -> bool:
        return bool(await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{self.schema}".{table}'))

    async def _count(self, connection: Connection, table: str, exact_sql: str | None = None) -> int:
        """Rows of a table: exact when small, the planner's estimate when large."""
        estimate = await connection.fetchval(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass($1)", f'"{self.schema}".{table}'
        )
        if estimate is not None and estimate > EXACT_COUNT_LIMIT:
            return int(estimate)
        sql = exact_sql or in_schema(f"SELECT count(*) FROM {{schema}}.{table}", self.schema)  # noqa: S608 - fixed names
        return int(await connection.fetchval(sql))

    async def view(self, group: str, deprecated_below: Mapping[str, int]) -> PgView:
        """One reading; `deprecated_below` maps an entity type to its stable version (older ones are deprecated)."""
        view = PgView()
        try:
            async with pg_errors("observe"), self._pool.acquire() as connection:
                view.server_version = str(await connection.fetchval("SHOW server_version"))
                async with connection.transaction(isolation="repeatable_read", readonly=True):
                    await self._read(connection, view, group, deprecated_below)
        except asyncpg.PostgresError as error:  # e.g. a table of a newer release missing: report, do not crash
            view.error = f"{type(error).__name__}: {error}"
        except ServiceUnavailableError as error:
            view.error = str(error)
        return view

    async def _read(
        self, connection: Connection, view: PgView, group: str, deprecated_below: Mapping[str, int]
    ) -> None:
        view.schema_exists = await self._has(connection, "consumer_offsets")
        if not view.schema_exists:
            return
        sql = self._sql
        view.stored_offsets = [
            StoredOffset(r["topic"], int(r["partition"]), int(r["next_offset"]), float(r["age_s"]))
            for r in await connection.fetch(sql["offsets"], group)
        ]
        view.applied_timeline = [
            (int(r["bucket"]), int(r["events"]))
            for r in await connection.fetch(sql["timeline"], TIMELINE_BUCKET_S, float(TIMELINE_WINDOW_S))
        ]
        view.applied_total = await self._count(connection, "applied_ops")
        view.decisions_total = int(await connection.fetchval(sql["decisions"]))
        view.hot_entities = [
            Hotspot(r["entity_type"], r["entity_id"], int(r["conflicts"]))
            for r in await connection.fetch(sql["hot_entities"], TOP)
        ]
        view.hot_fields = [
            FieldHotspot(r["entity_type"], r["field"], int(r["conflicts"]))
            for r in await connection.fetch(sql["hot_fields"], TOP)
        ]
        view.outbox_rows = await self._count(connection, "outbox")
        if not await self._has(connection, "devices"):
            return  # no gateway tables in this schema
        view.devices_total = int(await connection.fetchval(sql["devices"]))
        view.versions = [
            VersionShare(
                r["entity_type"],
                int(r["version"]),
                int(r["devices"]),
                int(r["version"]) < deprecated_below.get(r["entity_type"], 0),
            )
            for r in await connection.fetch(sql["versions"])
        ]
        view.backlog = [
            Backlog(r["tenant_id"], r["device_id"], int(r["entries"]))
            for r in await connection.fetch(sql["backlog"], TOP, BACKLOG_CAP)
            if int(r["entries"]) > 0
        ]
        view.devices_behind = int(await connection.fetchval(sql["behind"]))
