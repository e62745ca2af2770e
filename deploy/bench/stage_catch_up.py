"""Stage `catch_up`: a device that missed `catch_up_rows` changes pulls and applies them, vs. a bare keyset read.

Setup: the changes are committed through `PgProjectionStore.apply_batch` (the projector's own transaction:
entity rows, outbox feed rows, dedup rows), 500 per batch, for one tenant. Ours: a device of the SDK
(`Device`, SQLite store) enrolled at `keel run gateway` — its own process — pulls page after page with its
sync loop (manifest checked, each change down-cast from v3 to the device's negotiated v2, merged with the
conflict rules, page and cursor committed in one SQLite transaction) until a pull comes back empty.
Baseline: bare asyncpg reading the same feed rows with the same keyset query shape, 1,000 rows per page.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg

from deploy.bench.config import BenchConfig
from deploy.bench.context import BenchContext
from deploy.bench.figures import Figure, Goal, Target
from deploy.bench.profiling import profiled
from deploy.bench.services import ENROLLMENT_SECRET, gateway_process
from deploy.bench.workload import LARGE_VERSION, Workload
from producers.device import Device, SyncConfig
from producers.gateway.service import GATEWAY_SQL
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import PROJECTOR_SQL, quote_ident
from projections.sql_migrator_adapter import migrate

__all__ = ["run_catch_up"]

TARGET = Target(Goal.OURS_AT_LEAST, 25_000)
PAGE = 1_000  # the gateway's largest page
BATCH = 500


async def _fill(context: BenchContext, schema: str, count: int) -> str:
    """`count` accepted changes of one tenant (returned), committed by the projector's store, 500 a batch."""
    pool = await context.pool(max_size=2)
    try:
        await migrate(pool, schema, (PROJECTOR_SQL, GATEWAY_SQL))
        store = PgProjectionStore(pool, schema)
        workload = Workload(
            devices=20, tenants=1, entities=max(10, count // 5), tag=f"{context.tag}-catchup", version=LARGE_VERSION
        )
        events = workload.events(count)
        partition = TopicPartition("bench.task.changes", 0)
        for start in range(0, len(events), BATCH):
            chunk = events[start : start + BATCH]
            sourced = tuple(SourcedEvent(e, SourcePosition(partition.topic, 0, start + i)) for i, e in enumerate(chunk))
            advance = OffsetAdvance(partition, None if start == 0 else start, start + len(chunk))
            outcome = await store.apply_batch(ProjectionBatch("bench", (advance,), sourced))
            if not outcome.committed:
                raise RuntimeError("catch-up setup: a batch did not commit")
    finally:
        await pool.close()
    return events[0].tenant_id


async def wait_until_readable(database_url: str, schema: str, tenant: str, *, timeout_s: float = 600.0) -> None:
    """Until every feed row of `tenant` is below the cluster's oldest running transaction (readable).

    Readers never see rows at or above `pg_snapshot_xmin` (docs/projections.md): a long transaction anywhere
    on the cluster — other work on a shared machine — holds every feed back until it ends.
    """
    table = f"{quote_ident(schema)}.outbox"
    connection = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            hidden = await connection.fetchval(
                f"SELECT count(*) FROM {table} WHERE tenant_id = $1 "  # noqa: S608 - quoted identifier
                "AND tx >= pg_snapshot_xmin(pg_current_snapshot())",
                tenant,
            )
            if not hidden:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{hidden} feed rows still behind a transaction that has run for over {timeout_s:.0f}s elsewhere "
                    "on the cluster"
                )
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


async def _keyset_rate(database_url: str, schema: str, tenant: str) -> tuple[float, int]:
    """(rows/s, rows) of reading the tenant's feed in pages of `PAGE` by (tx, pos), as the outbox adapter does."""
    query = (
        "SELECT tx::text AS tx, pos, device_id, kind, entity_type, entity_id, event_id, body, trace "  # noqa: S608
        f"FROM {quote_ident(schema)}.outbox WHERE tenant_id = $1 AND (device_id IS NULL OR device_id = $2) "
        "AND (tx, pos) > ($3::text::xid8, $4::bigint) AND tx < pg_snapshot_xmin(pg_current_snapshot()) "
        "ORDER BY tx, pos LIMIT $5"
    )
    connection = await asyncpg.connect(database_url)
    try:
        tx, pos, total = "0", 0, 0
        began = time.perf_counter()
        while True:
            rows = await connection.fetch(query, tenant, "bench-reader", tx, pos, PAGE)
            if not rows:
                break
            total += len(rows)
            tx, pos = rows[-1]["tx"], rows[-1]["pos"]
        return total / (time.perf_counter() - began), total
    finally:
        await connection.close()


async def _device_rate(url: str, tenant: str, folder: Path, label: str) -> tuple[float, int]:
    """(rows/s, rows) of a new SDK device pulling and applying the whole feed."""
    device = await Device.enroll(
        folder / f"{label}.db",
        url,
        tenant_id=tenant,
        enrollment_secret=ENROLLMENT_SECRET,
        versions={"task": [1, 2], "project": [1], "comment": [1]},
        config=SyncConfig(pull_limit=PAGE, digest_interval_s=None, use_stream=False),
    )
    try:
        began = time.perf_counter()
        applied = await device.sync_loop.pull_all()
        return applied / (time.perf_counter() - began), applied
    finally:
        await device.close()


async def run_catch_up(config: BenchConfig, context: BenchContext) -> list[Figure]:
    """Pull-and-apply rate of a fresh device vs. the bare keyset read, `repetitions` times."""
    names = context.names("catchup")
    settings = names.settings(context.settings)
    tenant = await _fill(context, settings.pg_schema, config.catch_up_rows)
    await wait_until_readable(settings.database_url, settings.pg_schema, tenant)
    await context.create_topics(settings)
    gateway, url = gateway_process(settings, context.log_dir)
    samples: dict[str, list[float]] = {}
    rows: dict[str, int] = {}
    try:
        await gateway.start()
        with tempfile.TemporaryDirectory(prefix="keel-bench-") as folder:
            for repetition in range(config.repetitions):
                rate, rows["device"] = await _device_rate(url, tenant, Path(folder), f"device{repetition}")
                samples.setdefault("device", []).append(rate)
                rate, rows["keyset"] = await _keyset_rate(settings.database_url, settings.pg_schema, tenant)
                samples.setdefault("keyset", []).append(rate)
            if config.profile:
                with profiled(context.profiles, "catch_up (the device's side)"):
                    await _device_rate(url, tenant, Path(folder), "profiled")
    finally:
        await gateway.stop()
    context.tally(f"catch_up: {names.schema} rows pulled", sent=config.catch_up_rows, landed=rows["device"])
    if rows["device"] != rows["keyset"]:
        raise RuntimeError(f"the device applied {rows['device']} changes, the feed holds {rows['keyset']}")
    return [
        Figure(
            "catch_up.pull_and_apply",
            "an SDK device pulls (pages of 1,000, manifest, v3 → v2) and applies (merge, SQLite) the changes it missed",
            "rows/s",
            samples["device"],
            samples["keyset"],
            "bare asyncpg keyset SELECT of the same feed rows, same page size",
            target=TARGET,
            extra={"rows": rows["device"], "page": PAGE},
        )
    ]
