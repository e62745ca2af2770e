"""Stage `fan_out`: what one change costs to project with 1, 100 and 1,000 devices in its tenant.

For each device count, in a fresh schema: that many devices get a feed cursor (as pulling devices do), then
`fan_out_changes` changes of the tenant are committed through `PgProjectionStore.apply_batch` in batches of
150 (the projector's whole transaction: offsets, dedup, entities, decisions, one feed row per change). The
figure is milliseconds per change; the baseline is the same with one device. Flat means the feed is written
once per change whatever the number of devices (docs/projections.md, "Per-device outboxes"); the outbox rows
written per change are checked and reported.
"""

from __future__ import annotations

import time

from deploy.bench.config import BenchConfig
from deploy.bench.context import BenchContext
from deploy.bench.figures import Figure, Goal, Target
from deploy.bench.workload import LARGE_VERSION, Workload
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import PROJECTOR_SQL, in_schema
from projections.sql_migrator_adapter import migrate

__all__ = ["DEVICE_COUNTS", "run_fan_out"]

DEVICE_COUNTS = (1, 100, 1_000)
FLAT = Target(Goal.RATIO_AT_LEAST, 0.8)  # "flat": within 20 % of the one-device cost (a shared, noisy machine)
BATCH = 150


async def _cost(context: BenchContext, devices: int, changes: int, label: str) -> tuple[float, float]:
    """(ms per change, feed rows per change) with `devices` cursors in the tenant, in a fresh schema."""
    schema = context.fresh_schema(label)
    pool = await context.pool(max_size=2)
    try:
        await migrate(pool, schema, (PROJECTOR_SQL,))
        # The same writers every time (20 devices, 200 entities); only the number of reading devices changes.
        workload = Workload(devices=20, tenants=1, entities=200, tag="fanout", version=LARGE_VERSION)
        events = workload.events(changes)
        tenant = events[0].tenant_id
        await pool.executemany(
            in_schema(
                "INSERT INTO {schema}.device_cursors (tenant_id, device_id, cursor, cursor_tx, cursor_pos) "
                "VALUES ($1, $2, '0.0', '0'::xid8, 0)",
                schema,
            ),
            [(tenant, f"reader-{index}") for index in range(devices)],
        )
        store = PgProjectionStore(pool, schema)
        partition = TopicPartition(f"{label}.task.changes", 0)
        began = time.perf_counter()
        for start in range(0, changes, BATCH):
            chunk = events[start : start + BATCH]
            sourced = tuple(SourcedEvent(e, SourcePosition(partition.topic, 0, start + i)) for i, e in enumerate(chunk))
            advance = OffsetAdvance(partition, None if start == 0 else start, start + len(chunk))
            if not (await store.apply_batch(ProjectionBatch("bench", (advance,), sourced))).committed:
                raise RuntimeError("fan-out: a batch did not commit")
        per_change_ms = (time.perf_counter() - began) / changes * 1000
        rows = await pool.fetchval(
            in_schema("SELECT count(*) FROM {schema}.outbox WHERE tenant_id = $1 AND kind = 'change'", schema), tenant
        )
        return per_change_ms, int(rows) / changes
    finally:
        await pool.close()


async def run_fan_out(config: BenchConfig, context: BenchContext) -> list[Figure]:
    """Milliseconds per change at each device count, interleaved per repetition."""
    samples: dict[int, list[float]] = {count: [] for count in DEVICE_COUNTS}
    rows: dict[int, float] = {}
    for repetition in range(config.repetitions):
        for devices in DEVICE_COUNTS:
            cost, rows[devices] = await _cost(context, devices, config.fan_out_changes, f"fan{devices}x{repetition}")
            samples[devices].append(cost)
    extra = {"changes": config.fan_out_changes, "batch": BATCH, "feed_rows_per_change": rows}
    return [
        Figure(
            f"fan_out.devices_{devices}",
            f"projector transaction per change, {devices:,} devices in the tenant",
            "ms/change",
            samples[devices],
            samples[1],
            "the same with 1 device in the tenant",
            higher_is_better=False,
            target=FLAT,
            extra=extra,
        )
        for devices in DEVICE_COUNTS
        if devices != 1
    ]
