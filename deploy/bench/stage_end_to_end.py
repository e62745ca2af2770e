"""Stage `end_to_end`: device push → projected, sustained, with every service on this machine; then latency.

`keel run gateway` and `keel run projector` run as their own processes beside Kafka, PostgreSQL and the
registry; this process is the devices (enrolled with the SDK's client, pushing prepared bodies over HTTP)
and the watch on `applied_ops`. Throughput: every device pushes flat out for `e2e_seconds`; the figure is
ops projected per second after the first fifth (warm-up), with the CPU each process used per projected op
(what bounds it on two cores). Latency: after the backlog is gone, devices push at half that rate, each
op's send time is kept, and the watch (polling every 10 ms) notes when its row appears in PostgreSQL; p50 and
p99 are over all ops of the window. Baselines, same run: bare aiokafka produce→consume of the records the
gateway wrote (throughput), and a produce→consume round trip at the same rate and value size (latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from deploy.bench.config import BenchConfig
from deploy.bench.context import BenchContext
from deploy.bench.cpu import CpuMeter
from deploy.bench.figures import Figure, Goal, Target, percentile
from deploy.bench.load import Fleet, ProjectionWatch
from deploy.bench.raw_kafka import produce_consume, round_trip_latencies
from deploy.bench.services import gateway_process, projector_process
from deploy.bench.workload import Workload, traceparent
from keel.event_log import OutgoingRecord
from keel.kafka_adapter import TopicSpec, ensure_topics
from schemas.envelope import TraceHeaders
from schemas.event_encoder import EventEncoder
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["run_end_to_end"]

THROUGHPUT = Target(Goal.OURS_AT_LEAST, 20_000)
LATENCY_P99 = Target(Goal.OURS_AT_MOST, 100)
PARTITIONS = 3
E2E_BATCH = 100
BACKLOG_LIMIT = 5_000  # ops accepted but not yet projected, beyond which the devices wait


async def _bare_records(context: BenchContext, topic_prefix: str, count: int) -> list[OutgoingRecord]:
    """`count` records like the gateway's (same encoder, headers), on a topic no projector reads."""
    settings = context.settings.model_copy(update={"topic_prefix": topic_prefix})
    registry = ConfluentSchemaRegistry(settings.registry_url)
    try:
        encoder = EventEncoder(registry, settings.topic_for, auto_register=True)
        records = []
        for event in Workload(tag=f"{context.tag}-bare").events(count):
            headers = TraceHeaders(
                {
                    TraceHeaders.TRACEPARENT: traceparent().encode(),
                    TraceHeaders.ACCEPTED_AT_MS: str(int(time.time() * 1000)).encode(),
                }
            )
            record = await encoder.record(event, headers)
            records.append(OutgoingRecord(f"{topic_prefix}.bare", record.key, record.value, record.headers))
    finally:
        await registry.close()
    await ensure_topics(settings, [TopicSpec(f"{topic_prefix}.bare", PARTITIONS, 1)])
    return records


async def _sustained(
    fleet: Fleet, watch: ProjectionWatch, meter: CpuMeter, seconds: float
) -> tuple[float, dict[str, object]]:
    """Ops projected per second after a fifth of `seconds` of warm-up, devices held to a bounded backlog."""
    before = await watch.count()
    projected = [before]

    async def follow() -> None:
        while True:
            projected[0] = await watch.count()
            await asyncio.sleep(0.1)

    def may_push() -> bool:
        # Sustained means the projector keeps up: devices hold back while the backlog is past the limit.
        return before + fleet.acknowledged - projected[0] < BACKLOG_LIMIT

    follower = asyncio.create_task(follow())
    try:
        pushing = asyncio.create_task(fleet.push_for(seconds, may_push=may_push))
        await asyncio.sleep(seconds / 5)
        meter.start()
        at_start, accepted_start, began = await watch.count(), fleet.acknowledged, time.monotonic()
        await pushing
        at_end, ended = await watch.count(), time.monotonic()
        split = meter.stop()
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    window = ended - began
    rate = (at_end - at_start) / window
    details: dict[str, object] = {
        "accepted_ops_per_s": round((fleet.acknowledged - accepted_start) / window),
        "projected_ops_per_s": round(rate),
        "backlog_at_end": before + fleet.acknowledged - at_end,
        "cpu_us_per_projected_op": split.per_event_us(at_end - at_start),
        "cores_busy": split.cores(),
    }
    await watch.wait_for(before + fleet.acknowledged, timeout_s=600)
    return rate, details


async def _latencies(fleet: Fleet, watch: ProjectionWatch, rate: float, seconds: float) -> list[float]:
    """Milliseconds from push to row of each op pushed at `rate` (after a fifth of `seconds` of warm-up)."""
    projected_before, acknowledged_before = await watch.count(), fleet.acknowledged
    floor = {stream.device_id: stream.seq for stream in fleet.streams}
    stop = asyncio.Event()
    observing = asyncio.create_task(watch.observe(list(floor), stop, floors=floor))
    warmed_up = time.time() + seconds / 5
    try:
        await fleet.push_at_rate(rate, seconds)
        await watch.wait_for(projected_before + fleet.acknowledged - acknowledged_before, timeout_s=120)
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        await observing
    return [
        (watch.seen[key] - sent) * 1000 for key, sent in fleet.sent.items() if sent >= warmed_up and key in watch.seen
    ]


async def run_end_to_end(config: BenchConfig, context: BenchContext) -> list[Figure]:
    """Sustained throughput and latency at half of it, against bare Kafka, `heavy_repetitions` times."""
    names = context.names("e2e")
    settings = names.settings(context.settings, change_topic_partitions=PARTITIONS)
    await context.create_topics(settings)
    gateway, url = gateway_process(settings, context.log_dir)
    projector = projector_process(settings, context.log_dir)
    watch = ProjectionWatch(settings.database_url, settings.pg_schema)
    samples: dict[str, list[float]] = {}
    extra: dict[str, object] = {
        "devices": config.e2e_devices,
        "ops_per_push": E2E_BATCH,
        "backlog_limit": BACKLOG_LIMIT,
    }
    pushed = 0
    try:
        await asyncio.gather(gateway.start(), projector.start())
        await watch.start()
        for repetition in range(config.heavy_repetitions):
            workload = Workload(devices=config.e2e_devices, tag=f"{context.tag}-e2e{repetition}")
            fleet = Fleet(url, workload.streams(), E2E_BATCH)
            await fleet.start()
            try:
                meter = CpuMeter({"gateway": gateway.cpu_seconds, "projector": projector.cpu_seconds})
                rate, extra[f"repetition {repetition + 1}"] = await _sustained(fleet, watch, meter, config.e2e_seconds)
                half = max(10.0, rate / 2)
                latencies = await _latencies(fleet, watch, half, config.latency_seconds)
            finally:
                pushed += fleet.acknowledged
                await fleet.close()
            samples.setdefault("throughput", []).append(rate)
            samples.setdefault("p50", []).append(percentile(latencies, 0.5))
            samples.setdefault("p99", []).append(percentile(latencies, 0.99))
            samples.setdefault("half_rate", []).append(half)
            bare = await _bare_records(context, names.prefix, max(2_000, int(rate * 5)))
            samples.setdefault("bare_throughput", []).append(await produce_consume(settings, bare, PARTITIONS))
            round_trip = await round_trip_latencies(
                settings,
                f"{names.prefix}.bare",
                PARTITIONS,
                value=bare[0].value or b"",
                rate=half,
                seconds=config.latency_seconds,
            )
            round_trip = round_trip[len(round_trip) // 5 :]  # the same warm-up as ours
            samples.setdefault("bare_p50", []).append(percentile(round_trip, 0.5))
            samples.setdefault("bare_p99", []).append(percentile(round_trip, 0.99))
        context.tally(f"end_to_end: {names.schema} ops", sent=pushed, landed=await watch.count())
    finally:
        await watch.close()
        await projector.stop()
        await gateway.stop()
    extra["latency_rate_ops_per_s"] = [round(r) for r in samples["half_rate"]]
    extra["latency_resolution_ms"] = 10
    return [
        Figure(
            "end_to_end.throughput",
            "device push (HTTP) → gateway → Kafka → projector → PostgreSQL, ops projected per second",
            "ops/s",
            samples["throughput"],
            samples["bare_throughput"],
            "bare aiokafka produce→consume of the same records (acks=all, idempotent)",
            target=THROUGHPUT,
            notes="gateway and projector in their own processes; Kafka, PostgreSQL, registry and the devices "
            "on the same two cores",
            extra=extra,
        ),
        Figure(
            "end_to_end.latency_p99",
            "push sent → row in PostgreSQL, p99, at half the sustained rate",
            "ms",
            samples["p99"],
            samples["bare_p99"],
            "bare aiokafka produce→consume round trip, p99, same rate and value size",
            higher_is_better=False,
            target=LATENCY_P99,
            extra={"rate_ops_per_s": extra["latency_rate_ops_per_s"]},
        ),
        Figure(
            "end_to_end.latency_p50",
            "push sent → row in PostgreSQL, p50, at half the sustained rate",
            "ms",
            samples["p50"],
            samples["bare_p50"],
            "bare aiokafka produce→consume round trip, p50",
            higher_is_better=False,
        ),
    ]
