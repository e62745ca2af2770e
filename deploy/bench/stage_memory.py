"""Stage `memory`: gateway and projector RSS as the backlog grows tenfold, and payloads from 100 B to 100 KB.

Backlog, gateway: devices drain their queues into one `keel run gateway` as fast as they can — first
`memory_backlog` ops (its peak RSS meanwhile), then nine times as many more (its peak over those). Backlog,
projector: a fresh `keel run projector` works off `memory_backlog` events waiting in Kafka, another one ten
times as many (each one's peak RSS). Flat means the peak at 10x stays within 10 % of the peak at 1x: nothing
grows with the backlog.

Payload sizes: for each size a fresh gateway (op limit raised to 256 KB, the bench's only non-default
setting) and projector run side by side while devices push about `payload_bytes` of task v3 payloads; the
figure is ops/s from the first push until the last op is projected, with MB/s and both services' peak RSS,
against bare aiokafka produce→consume of records of the same size.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from deploy.bench.config import BenchConfig
from deploy.bench.context import BenchContext
from deploy.bench.figures import Figure, Goal, Target
from deploy.bench.load import Fleet, ProjectionWatch
from deploy.bench.raw_kafka import produce_consume
from deploy.bench.services import ServiceProcess, gateway_process, projector_process
from deploy.bench.stage_project import produce_events
from deploy.bench.workload import LARGE_VERSION, TASK_VERSION, Workload
from keel.event_log import OutgoingRecord
from keel.kafka_adapter import TopicSpec, ensure_topics
from schemas.envelope import TraceHeaders
from schemas.event_encoder import EventEncoder
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["run_memory"]

FLAT_10_PERCENT = Target(Goal.RATIO_AT_LEAST, 1 / 1.1)
MB = 1024 * 1024
DEVICES = 16
MAX_OP_BYTES = 256 * 1024


@contextlib.asynccontextmanager
async def _peak_rss(process: ServiceProcess, interval_s: float = 0.05) -> AsyncIterator[list[int]]:
    """Sample `process`' RSS while the block runs; the list's single item is the peak (bytes)."""
    peak = [process.rss_bytes()]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], process.rss_bytes())
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        peak[0] = max(peak[0], process.rss_bytes())


async def _gateway_backlog(context: BenchContext, ops: int, label: str) -> tuple[float, float, dict[int, float]]:
    """Peak MB of one gateway taking `ops` ops, then nine times as many more (devices draining a backlog).

    The nine are taken in steps (1, 2, 2 and 4 times `ops`) and the peak after each is kept too, so the report
    shows whether memory climbs with the ops taken or steps once and stays.
    """
    names = context.names(label)
    settings = names.settings(context.settings)
    await context.create_topics(settings)
    gateway, url = gateway_process(settings, context.log_dir)
    fleet = Fleet(url, Workload(devices=DEVICES, tag=f"{context.tag}-{label}").streams(), batch=200)
    try:
        await gateway.start()
        await fleet.start()
        async with _peak_rss(gateway) as first:
            await fleet.push_count(ops)
        steps = {ops: first[0] / MB}
        taken = ops
        for factor in (1, 2, 2, 4):
            async with _peak_rss(gateway) as peak:
                await fleet.push_count(ops * factor)
            taken += ops * factor
            steps[taken] = peak[0] / MB
    finally:
        await fleet.close()
        await gateway.stop()
    return first[0] / MB, max(list(steps.values())[1:]), steps


async def _projector_backlog(context: BenchContext, events: int, label: str) -> float:
    """Peak MB of a fresh projector working off a backlog of `events` events (written like the gateway's)."""
    names = context.names(label)
    settings = names.settings(context.settings)
    await produce_events(settings, Workload(devices=DEVICES, tag=f"{context.tag}-{label}").events(events))
    projector = projector_process(settings, context.log_dir)
    watch = ProjectionWatch(settings.database_url, settings.pg_schema)
    try:
        await projector.start()
        await watch.start()
        async with _peak_rss(projector) as peak:
            await watch.wait_for(events, timeout_s=1_200)
        context.tally(f"memory: {names.schema} ops", sent=events, landed=await watch.count())
    finally:
        await watch.close()
        await projector.stop()
    return peak[0] / MB


async def _bare_rate(context: BenchContext, prefix: str, workload: Workload, ops: int) -> float:
    """Bare aiokafka produce→consume ops/s of `ops` records encoded like the gateway's, of the workload's size."""
    settings = context.settings.model_copy(update={"topic_prefix": prefix})
    registry = ConfluentSchemaRegistry(settings.registry_url)
    try:
        encoder = EventEncoder(registry, settings.topic_for, auto_register=True)
        headers = TraceHeaders({TraceHeaders.ACCEPTED_AT_MS: str(int(time.time() * 1000)).encode()})
        records = []
        for event in workload.events(ops):
            record = await encoder.record(event, headers)
            records.append(OutgoingRecord(f"{prefix}.bare", record.key, record.value, record.headers))
    finally:
        await registry.close()
    await ensure_topics(settings, [TopicSpec(f"{prefix}.bare", settings.change_topic_partitions, 1)])
    return await produce_consume(settings, records, settings.change_topic_partitions)


async def _payload(context: BenchContext, size: int, budget: int, label: str) -> dict[str, float]:
    """Ops/s, MB/s and peak RSS of both services for payloads of `size` bytes, and the bare Kafka rate."""
    names = context.names(label)
    settings = names.settings(context.settings)
    await context.create_topics(settings)
    ops = max(40, min(20_000, budget // size))
    batch = max(1, min(200, 700_000 // (size + 700)))  # under the 1 MB request body limit
    version = LARGE_VERSION if size > 8_000 else TASK_VERSION
    workload = Workload(devices=8, tag=f"{context.tag}-{label}", payload_bytes=size, version=version)
    gateway, url = gateway_process(settings, context.log_dir, KEEL_GATEWAY_MAX_OP_BYTES=str(MAX_OP_BYTES))
    projector = projector_process(settings, context.log_dir)
    watch = ProjectionWatch(settings.database_url, settings.pg_schema)
    fleet = Fleet(url, workload.streams(), batch=batch)
    try:
        await asyncio.gather(gateway.start(), projector.start())
        await watch.start()
        await fleet.start()
        async with _peak_rss(gateway) as gateway_peak, _peak_rss(projector) as projector_peak:
            began = time.perf_counter()
            await fleet.push_count(ops)
            await watch.wait_for(ops, timeout_s=1_200)
            seconds = time.perf_counter() - began
        context.tally(f"memory: {names.schema} ops", sent=fleet.acknowledged, landed=await watch.count())
    finally:
        await fleet.close()
        await watch.close()
        await projector.stop()
        await gateway.stop()
    bare = await _bare_rate(
        context,
        names.prefix,
        Workload(devices=8, tag=f"{context.tag}-{label}b", payload_bytes=size, version=version),
        ops,
    )
    return {
        "ops_per_s": ops / seconds,
        "mb_per_s": ops * size / seconds / MB,
        "gateway_peak_mb": gateway_peak[0] / MB,
        "projector_peak_mb": projector_peak[0] / MB,
        "bare_ops_per_s": bare,
        "ops": ops,
    }


async def run_memory(config: BenchConfig, context: BenchContext) -> list[Figure]:
    """Backlog 1x vs 10x (peak RSS of each service), then every payload size, `repetitions` times."""
    peaks: dict[str, list[float]] = {}
    gateway_steps: list[dict[int, float]] = []  # per repetition: ops taken so far → peak MB
    for repetition in range(config.heavy_repetitions):
        small, large, steps = await _gateway_backlog(context, config.memory_backlog, f"memgw{repetition}")
        gateway_steps.append({taken: round(mb, 1) for taken, mb in steps.items()})
        peaks.setdefault("gateway_1", []).append(small)
        peaks.setdefault("gateway_10", []).append(large)
        for scale in (1, 10):
            peaks.setdefault(f"projector_{scale}", []).append(
                await _projector_backlog(context, config.memory_backlog * scale, f"mempj{scale}x{repetition}")
            )
    sizes: dict[int, list[dict[str, float]]] = {}
    for repetition in range(config.heavy_repetitions):
        for size in config.payload_sizes:
            sizes.setdefault(size, []).append(
                await _payload(context, size, config.payload_bytes, f"pay{size}x{repetition}")
            )
    backlog = {"small_ops": config.memory_backlog, "large_ops": config.memory_backlog * 10, "devices": DEVICES}
    figures = [
        Figure(
            "memory.gateway_backlog_10x",
            f"gateway peak RSS while taking {config.memory_backlog * 9:,} more ops after the first "
            f"{config.memory_backlog:,} (devices draining a backlog after an outage)",
            "MB",
            peaks["gateway_10"],
            peaks["gateway_1"],
            f"the same gateway's peak while it took the first {config.memory_backlog:,} ops",
            higher_is_better=False,
            target=FLAT_10_PERCENT,
            extra={**backlog, "peak_mb_by_ops_taken": gateway_steps},
        ),
        Figure(
            "memory.projector_backlog_10x",
            f"projector peak RSS working off a backlog of {config.memory_backlog * 10:,} events",
            "MB",
            peaks["projector_10"],
            peaks["projector_1"],
            f"the same with {config.memory_backlog:,} events",
            higher_is_better=False,
            target=FLAT_10_PERCENT,
            extra=backlog,
        ),
    ]
    smallest, largest = min(config.payload_sizes), max(config.payload_sizes)
    for size in config.payload_sizes:
        runs = sizes[size]
        figures.append(
            Figure(
                f"memory.payload_{size}",
                f"push → projected with {size:,}-byte payloads, ops/s",
                "ops/s",
                [run["ops_per_s"] for run in runs],
                [run["bare_ops_per_s"] for run in runs],
                "bare aiokafka produce→consume of records of the same size",
                extra={
                    "ops": runs[0]["ops"],
                    "mb_per_s": [round(run["mb_per_s"], 2) for run in runs],
                    "gateway_peak_mb": [round(run["gateway_peak_mb"], 1) for run in runs],
                    "projector_peak_mb": [round(run["projector_peak_mb"], 1) for run in runs],
                },
            )
        )
    for service in ("gateway", "projector"):
        figures.append(
            Figure(
                f"memory.{service}_payload_{largest}",
                f"{service} peak RSS with {largest:,}-byte payloads",
                "MB",
                [run[f"{service}_peak_mb"] for run in sizes[largest]],
                [run[f"{service}_peak_mb"] for run in sizes[smallest]],
                f"the same with {smallest:,}-byte payloads",
                higher_is_better=False,
            )
        )
    return figures
