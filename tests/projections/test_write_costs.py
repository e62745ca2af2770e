"""Measured write costs: outbox cost per change at 1, 100 and 1,000 devices; bulk upsert methods compared.

The figures are printed (run with -s) and recorded in docs/projections.md; the assertions check what the
figures rest on: one feed row per change whatever the number of devices, and equal results per method.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from keel.settings import Settings
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.conflict_rules import merge_events
from projections.outbox_pg_adapter import PgOutbox
from projections.pg_adapter import Pool
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import in_schema
from projections.state_codec import state_to_json
from tests.consumers.helpers import EventFactory

pytestmark = pytest.mark.integration


async def test_outbox_write_cost_does_not_grow_with_the_number_of_devices(keel_settings: Settings, pool: Pool) -> None:
    schema = keel_settings.pg_schema
    store, outbox = PgProjectionStore(pool, schema), PgOutbox(pool, schema)
    changes, batch_size = 600, 150
    samples: dict[int, list[float]] = {1: [], 100: [], 1_000: []}
    for round_number in range(3):  # interleaved rounds; the minimum per size filters out a busy machine
        for devices, measured in samples.items():
            tenant = f"tenant-{devices}-{round_number}"
            for index in range(devices):
                await outbox.acknowledge(tenant, f"device-{index}", "0.0")
            factory = EventFactory(seed=devices, tenant_id=tenant, device_prefix=tenant)
            events = factory.random_task_events(changes, devices=min(devices, 20), entities=200)
            partition = TopicPartition(f"k.{tenant}.task.changes", 0)
            began = time.perf_counter()
            for start in range(0, changes, batch_size):
                chunk = events[start : start + batch_size]
                sourced = tuple(
                    SourcedEvent(e, SourcePosition(partition.topic, 0, start + i)) for i, e in enumerate(chunk)
                )
                advance = OffsetAdvance(partition, None if start == 0 else start, start + len(chunk))
                assert (await store.apply_batch(ProjectionBatch("g", (advance,), sourced))).committed
            measured.append((time.perf_counter() - began) / changes * 1_000)
            async with pool.acquire() as connection:
                rows = await connection.fetchval(
                    in_schema("SELECT count(*) FROM {schema}.outbox WHERE tenant_id = $1 AND kind = 'change'", schema),
                    tenant,
                )
            assert rows == changes  # one feed row per change, for 1 device or 1,000
    best = {devices: round(min(values), 3) for devices, values in samples.items()}
    print("\noutbox: ms per projected change (whole batch transaction), best of 3:", best)
    assert best[1_000] < best[1] * 3, samples


def _rows(count: int) -> list[tuple[Any, ...]]:
    factory = EventFactory(seed=5)
    rows = []
    for index in range(count):
        event = factory.event("dev", f"e{index}", title=f"t{index}", labels=["a", "b"], due_at=1_760_000_000_000)
        state = merge_events([event]).state
        rows.append(("tenant", f"e{index}", f"t{index}", ["a", "b"], state_to_json(state)))
    return rows


async def test_bulk_upsert_methods_write_the_same_rows_and_are_timed(keel_settings: Settings, pool: Pool) -> None:
    s = f'"{keel_settings.pg_schema}"'
    count = 2_000
    rows = _rows(count)
    timings: dict[str, list[float]] = {}
    async with pool.acquire() as connection:
        for name in ("unnest", "executemany", "copy"):
            await connection.execute(
                f"CREATE TABLE {s}.bench_{name} (tenant_id text, entity_id text, title text, labels text[], "
                "state jsonb, PRIMARY KEY (tenant_id, entity_id))"
            )
        for round_number in range(2):  # insert, then update every row
            current = [(t, e, f"{title}-{round_number}", labels, state) for t, e, title, labels, state in rows]
            timings.setdefault("unnest", []).append(await _unnest(connection, s, current))
            timings.setdefault("executemany", []).append(await _executemany(connection, s, current))
            timings.setdefault("copy", []).append(await _copy(connection, s, current))
        contents = []
        for name in ("unnest", "executemany", "copy"):
            fetched = await connection.fetch(f"SELECT * FROM {s}.bench_{name} ORDER BY entity_id")
            contents.append([tuple(r) for r in fetched])
    assert contents[0] == contents[1] == contents[2]
    assert len(contents[0]) == count
    print(
        f"\nbulk upsert of {count} rows, ms (insert round, update round):",
        {k: [round(v * 1000, 1) for v in vs] for k, vs in timings.items()},
    )


async def _unnest(connection: Any, s: str, rows: list[tuple[Any, ...]]) -> float:
    began = time.perf_counter()
    async with connection.transaction():
        await connection.execute(
            f"INSERT INTO {s}.bench_unnest SELECT t, e, ti, ARRAY(SELECT jsonb_array_elements_text(l::jsonb)), st "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) AS u(t, e, ti, l, st) "
            "ON CONFLICT (tenant_id, entity_id) DO UPDATE SET title = EXCLUDED.title, labels = EXCLUDED.labels, "
            "state = EXCLUDED.state",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [json.dumps(r[3]) for r in rows],
            [r[4] for r in rows],
        )
    return time.perf_counter() - began


async def _executemany(connection: Any, s: str, rows: list[tuple[Any, ...]]) -> float:
    began = time.perf_counter()
    async with connection.transaction():
        await connection.executemany(
            f"INSERT INTO {s}.bench_executemany VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, entity_id) "
            "DO UPDATE SET title = EXCLUDED.title, labels = EXCLUDED.labels, state = EXCLUDED.state",
            rows,
        )
    return time.perf_counter() - began


async def _copy(connection: Any, s: str, rows: list[tuple[Any, ...]]) -> float:
    began = time.perf_counter()
    async with connection.transaction():
        # COPY's binary format needs a binary jsonb codec; stage JSON as text and cast on the way in.
        await connection.execute(
            "CREATE TEMP TABLE bench_stage (tenant_id text, entity_id text, title text, labels text[], state text) "
            "ON COMMIT DROP"
        )
        await connection.copy_records_to_table(
            "bench_stage", records=[(t, e, ti, la, json.dumps(st)) for t, e, ti, la, st in rows]
        )
        await connection.execute(
            f"INSERT INTO {s}.bench_copy SELECT tenant_id, entity_id, title, labels, state::jsonb FROM bench_stage "
            "ON CONFLICT (tenant_id, entity_id) DO UPDATE "
            "SET title = EXCLUDED.title, labels = EXCLUDED.labels, state = EXCLUDED.state"
        )
    return time.perf_counter() - began
