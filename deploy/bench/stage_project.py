"""Stage `project`: events/s the real projector commits vs. a standalone COPY → temp table → upsert.

The events (task upserts from many devices, v2 as devices write them, each record with the traceparent and
acceptance headers the gateway sets) are produced once. Each repetition runs `consumers.projector.Projector`
— the service object `keel run projector` runs, in this process — over them into a fresh schema with a fresh
group: decode, validate, upcast v2 → v3, merge, dedup rows, decisions, outbox rows and the compare-and-set
offsets, one transaction per batch. The clock runs from partition assignment to the last event committed.

Baseline, same repetition: the rows the projector ended with are written into the same table (a fresh schema
migrated the same way) by a bare asyncpg connection, batch by batch as the projector saw them (500 events,
their distinct entities): COPY into a temporary table, `INSERT … SELECT … ON CONFLICT DO UPDATE`, commit.
Raw COPY: the same rows, one per event, copied into a table without keys.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from consumers.projector import Projector, topic_specs
from deploy.bench.config import BenchConfig
from deploy.bench.context import BenchContext, Names
from deploy.bench.figures import Figure, Goal, Target
from deploy.bench.load import applied_count
from deploy.bench.profiling import profiled
from deploy.bench.workload import Workload, traceparent
from keel.event_log import OutgoingRecord
from keel.kafka_adapter import AioKafkaLogWriter, ensure_topics
from keel.settings import Settings
from projections.sql_migrations import PROJECTOR_SQL, quote_ident
from projections.sql_migrator_adapter import migrate
from schemas.envelope import ChangeEvent, TraceHeaders
from schemas.event_encoder import EventEncoder
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["produce_events", "run_project", "run_projector"]

TARGET = Target(Goal.RATIO_AT_LEAST, 0.5)
BATCH = 500  # projector_batch_max_records


async def produce_events(settings: Settings, events: list[ChangeEvent], *, traced: bool = True) -> None:
    """Encode `events` like the gateway (registry ids, headers) and append them to the change topics."""
    await ensure_topics(settings, topic_specs(settings))
    registry = ConfluentSchemaRegistry(settings.registry_url)
    writer = AioKafkaLogWriter(settings)
    await writer.start()
    try:
        encoder = EventEncoder(registry, settings.topic_for, auto_register=True)
        records: list[OutgoingRecord] = []
        for event in events:
            values = {TraceHeaders.ACCEPTED_AT_MS: str(int(time.time() * 1000)).encode()}
            if traced:
                values[TraceHeaders.TRACEPARENT] = traceparent().encode()
            records.append(await encoder.record(event, TraceHeaders(values)))
        for start in range(0, len(records), 2_000):
            await writer.write(records[start : start + 2_000])
    finally:
        await writer.stop()
        await registry.close()


async def run_projector(settings: Settings, count: int, *, timeout_s: float = 900.0) -> float:
    """Events/s of a `Projector` (in this process) from partition assignment until `count` events applied."""
    projector = Projector(settings, health_port=0, lag_sample_s=3600.0)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop), name="bench-projector")
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                runtime = projector.supervisor.runtime if projector.supervisor else None
                if runtime is not None and runtime.assigned.is_set():
                    break
                if task.done():
                    await task
                    raise RuntimeError("the projector stopped before its partitions were assigned")
                await asyncio.sleep(0.005)
            began = time.perf_counter()
            while runtime.stats.applied + runtime.stats.duplicates < count:
                if task.done():
                    await task
                    raise RuntimeError("the projector stopped before applying every event")
                await asyncio.sleep(0.005)
            return count / (time.perf_counter() - began)
    finally:
        stop.set()
        await task


async def _final_rows(database_url: str, schema: str) -> tuple[list[str], dict[tuple[str, str], tuple[Any, ...]]]:
    """Columns (all but last_tx, updated_at) and rows of the projected task table, by (tenant, entity)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(f"SELECT * FROM {quote_ident(schema)}.task")  # noqa: S608 - quoted identifier
    finally:
        await connection.close()
    columns = [name for name in rows[0].keys() if name not in ("last_tx", "updated_at")]  # noqa: SIM118 - a Record
    return columns, {(row["tenant_id"], row["entity_id"]): tuple(row[c] for c in columns) for row in rows}


async def copy_upsert_rate(
    database_url: str, schema: str, columns: list[str], batches: list[list[tuple[Any, ...]]], events: int
) -> float:
    """Events/s of COPY → temp table → INSERT … ON CONFLICT DO UPDATE, one transaction per batch."""
    table = f"{quote_ident(schema)}.task"
    names = ", ".join(quote_ident(c) for c in columns)
    updates = ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in columns[2:])
    upsert = (
        f"INSERT INTO {table} ({names}, last_tx, updated_at) SELECT {names}, pg_current_xact_id(), now() "  # noqa: S608
        f"FROM bench_stage ON CONFLICT (tenant_id, entity_id) DO UPDATE SET {updates}, "
        "last_tx = pg_current_xact_id(), updated_at = now()"
    )
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            f"CREATE TEMPORARY TABLE bench_stage (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        began = time.perf_counter()
        for rows in batches:
            async with connection.transaction():
                await connection.copy_records_to_table("bench_stage", records=rows, columns=columns)
                await connection.execute(upsert)
        return events / (time.perf_counter() - began)
    finally:
        await connection.close()


async def raw_copy_rate(database_url: str, schema: str, columns: list[str], rows: list[tuple[Any, ...]]) -> float:
    """Rows/s of COPY into a table of the same columns without keys, in chunks of `BATCH`, one commit each."""
    connection = await asyncpg.connect(database_url)
    try:
        target = f"{quote_ident(schema)}.task_copy"
        await connection.execute(f"CREATE TABLE {target} (LIKE {quote_ident(schema)}.task INCLUDING DEFAULTS)")
        began = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            await connection.copy_records_to_table(
                "task_copy", schema_name=schema, records=rows[start : start + BATCH], columns=columns
            )
        return len(rows) / (time.perf_counter() - began)
    finally:
        await connection.close()


async def _migrated_schema(context: BenchContext, label: str) -> str:
    schema = context.fresh_schema(label)
    pool = await context.pool(max_size=1)
    try:
        await migrate(pool, schema, (PROJECTOR_SQL,))
    finally:
        await pool.close()
    return schema


async def run_project(config: BenchConfig, context: BenchContext) -> list[Figure]:
    """Projector runs (per-record spans on, as deployed, and off) against COPY-based baselines, interleaved."""
    base = context.names("project")
    settings = base.settings(context.settings, change_topic_partitions=3)
    events = Workload(tag=context.tag, entities=max(50, config.project_events // 8)).events(config.project_events)
    await produce_events(settings, events)
    samples: dict[str, list[float]] = {}
    for _ in range(config.repetitions):
        for label, spans in (("projector", True), ("projector_no_spans", False)):
            run = Names(base.prefix, context.fresh_schema("projrun"), f"{base.prefix}-{label}-{len(samples)}")
            rate = await run_projector(run.settings(settings, otel_record_spans=spans), len(events))
            samples.setdefault(label, []).append(rate)
            landed = await applied_count(context.settings.database_url, run.schema)
            context.tally(f"project: {run.schema} ops", sent=len(events), landed=landed)
        columns, final = await _final_rows(context.settings.database_url, run.schema)
        entities = {(e.tenant_id, e.entity_id) for e in events}
        context.tally(f"project: {run.schema} task rows", sent=len(entities), landed=len(final))
        batches = [
            [final[key] for key in dict.fromkeys((e.tenant_id, e.entity_id) for e in events[start : start + BATCH])]
            for start in range(0, len(events), BATCH)
        ]
        target = await _migrated_schema(context, "copyup")
        samples.setdefault("copy_upsert", []).append(
            await copy_upsert_rate(context.settings.database_url, target, columns, batches, len(events))
        )
        per_event = [final[(e.tenant_id, e.entity_id)] for e in events]
        samples.setdefault("raw_copy", []).append(
            await raw_copy_rate(context.settings.database_url, target, columns, per_event)
        )
    if config.profile:
        run = Names(base.prefix, context.fresh_schema("projprof"), f"{base.prefix}-profiled")
        with profiled(context.profiles, "project (Projector in process)"):
            await run_projector(run.settings(settings), len(events))
    extra = {
        "events": len(events),
        "entities": len({(e.tenant_id, e.entity_id) for e in events}),
        "partitions": 3,
        "batch_max_records": BATCH,
    }
    what = "COPY → temp table → INSERT … ON CONFLICT DO UPDATE of the same rows, same batches (bare asyncpg)"
    return [
        Figure(
            "project.projector",
            "the projector service in process: decode, validate, upcast, merge, upsert, outbox, dedup, offsets",
            "events/s",
            samples["projector"],
            samples["copy_upsert"],
            what,
            target=TARGET,
            notes="per-record spans on (the default), exporter none",
            extra=extra,
        ),
        Figure(
            "project.projector_record_spans_off",
            "the same with KEEL_OTEL_RECORD_SPANS=false (batch spans only)",
            "events/s",
            samples["projector_no_spans"],
            samples["copy_upsert"],
            what,
            target=TARGET,
            extra=extra,
        ),
        Figure(
            "project.raw_copy",
            "COPY → temp table → upsert (the baseline above)",
            "events/s",
            samples["copy_upsert"],
            samples["raw_copy"],
            "raw COPY of one row per event into a table without keys (rows/s)",
            notes="reported alongside: what the upsert costs over a bare COPY",
            extra=extra,
        ),
    ]
