"""What tracing costs the projector: events/s with spans off, with the "none" exporter and with "memory".

Writes N task events (each with a traceparent and keel-accepted-at-ms header, as the gateway writes them) to
topics of a fresh prefix once, then runs `keel run projector` over them once per configuration, each into its
own PostgreSQL schema and consumer group, and reads the rate from `applied_ops.applied_at`. Needs the local
stack (or KEEL_* endpoints). `--fakes` runs the same configurations in this process on the in-memory log and
store instead: no I/O, so it shows the CPU cost of the spans alone.
Usage: .venv/bin/python scripts/bench_tracing.py [--events 20000] [--rounds 3] [--fakes]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from consumers.projector import topic_specs  # noqa: E402 - after the path setup above
from keel.event_log import OutgoingRecord  # noqa: E402
from keel.hlc import HlcTimestamp  # noqa: E402
from keel.kafka_adapter import AioKafkaLogWriter, ensure_topics  # noqa: E402
from keel.settings import Settings  # noqa: E402
from projections.pg_adapter import connect_pool  # noqa: E402
from projections.sql_migrations import quote_ident  # noqa: E402
from schemas.envelope import ChangeEvent, Op, TraceHeaders  # noqa: E402
from schemas.event_encoder import EventEncoder  # noqa: E402
from schemas.registry_adapter import ConfluentSchemaRegistry  # noqa: E402

# (name, exporter, per-record spans, share of ops whose trace was sampled at capture)
CONFIGS = (
    ("spans off", "none", "false", 1.0),
    ("exporter none", "none", "true", 1.0),
    ("exporter memory", "memory", "true", 1.0),
    ("memory, 10% sampled", "memory", "true", 0.1),
)


def events(count: int, seed: int = 7) -> list[ChangeEvent]:
    """Task upserts from 50 devices over 5000 entities (few conflicts: the merge is not what is measured)."""
    rng = random.Random(seed)
    seqs: dict[str, int] = {}
    now = int(time.time() * 1000)
    made = []
    for index in range(count):
        device = f"bench-{rng.randrange(50)}"
        seqs[device] = seqs.get(device, 0) + 1
        made.append(
            ChangeEvent(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                tenant_id=f"tenant-{rng.randrange(5)}",
                device_id=device,
                device_seq=seqs[device],
                entity_type="task",
                entity_id=f"task-{rng.randrange(5000)}",
                op=Op.UPSERT,
                hlc=HlcTimestamp(now + index, 0, device),
                schema_version=3,
                payload={"title": f"t{index}", "priority": rng.randrange(4)},
                changed_fields=("priority", "title"),
                base_hlc=HlcTimestamp(now + index, 0, "seen"),
            )
        )
    return made


async def produce(settings: Settings, count: int, sampled: float) -> None:
    """Encode and write the events with the headers the gateway sets (`sampled`: share flagged as sampled)."""
    await ensure_topics(settings, topic_specs(settings))
    registry = ConfluentSchemaRegistry(settings.registry_url)
    writer = AioKafkaLogWriter(settings)
    await writer.start()
    try:
        encoder = EventEncoder(registry, settings.topic_for, auto_register=True)
        records: list[OutgoingRecord] = []
        rng = random.Random(11)
        for event in events(count):
            flags = "01" if rng.random() < sampled else "00"
            trace = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-{flags}"
            headers = TraceHeaders(
                {
                    TraceHeaders.TRACEPARENT: trace.encode(),
                    TraceHeaders.ACCEPTED_AT_MS: str(int(time.time() * 1000)).encode(),
                }
            )
            records.append(await encoder.record(event, headers))
        for start in range(0, len(records), 1000):
            await writer.write(records[start : start + 1000])
    finally:
        await writer.stop()
        await registry.close()


async def project(settings: Settings, count: int, exporter: str, record_spans: str) -> float:
    """Run a projector subprocess until it applied `count` events; its events/s from applied_at."""
    tag = uuid.uuid4().hex[:8]
    schema, group = f"bench_{tag}", f"bench-{tag}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEEL_")}
    env.update(
        KEEL_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KEEL_REGISTRY_URL=settings.registry_url,
        KEEL_DATABASE_URL=settings.database_url,
        KEEL_TOPIC_PREFIX=settings.topic_prefix,
        KEEL_PG_SCHEMA=schema,
        KEEL_CONSUMER_GROUP=group,
        KEEL_PROJECTOR_HEALTH_PORT="0",
        KEEL_OTEL_EXPORTER=exporter,
        KEEL_OTEL_RECORD_SPANS=record_spans,
        KEEL_LOG_LEVEL="WARNING",
    )
    keel = str(Path(sys.executable).with_name("keel"))
    process = subprocess.Popen([keel, "run", "projector"], env=env, stdout=subprocess.DEVNULL)  # noqa: ASYNC220
    pool = await connect_pool(settings.database_url, max_size=1)
    table = f"{quote_ident(schema)}.applied_ops"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            exists = await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.applied_ops")
            if exists and await pool.fetchval(f"SELECT count(*) FROM {table}") >= count:  # noqa: S608
                break
        else:
            raise TimeoutError(f"{exporter}/{record_spans}: not done in 600 s")
        seconds = await pool.fetchval(
            f"SELECT extract(epoch FROM max(applied_at) - min(applied_at))::float8 FROM {table}"  # noqa: S608
        )
        return count / max(seconds, 1e-3)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        await pool.close()


async def on_fakes(count: int, rounds: int) -> None:
    """The configurations on the in-memory log and store, in this process (memory last: it cannot be removed)."""
    from consumers.dead_letter import DeadLetterQueue
    from consumers.decoder import EventDecoder, entity_of_topic
    from consumers.runtime import ConsumerRuntime, RuntimeConfig
    from consumers.source import InMemoryConsumerSource
    from keel.event_log import InMemoryLog, InMemoryLogWriter
    from keel.telemetry import configure_telemetry
    from projections.store import InMemoryProjectionStore
    from schemas.domain_migrations import build_registry
    from schemas.registry import InMemorySchemaRegistry

    telemetry = configure_telemetry("bench")
    registry = InMemorySchemaRegistry()
    encoder = EventEncoder(registry, lambda entity: f"b.{entity}.changes", auto_register=True)
    logs: dict[float, InMemoryLog] = {}
    for share in (1.0, 0.1):
        log = InMemoryLog()
        log.create_topic("b.task.changes", 3)
        log.create_topic("b.dlq", 1)
        rng = random.Random(11)
        for event in events(count):
            flags = "01" if rng.random() < share else "00"
            trace = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-{flags}"
            log.append(await encoder.record(event, TraceHeaders({TraceHeaders.TRACEPARENT: trace.encode()})))
        logs[share] = log
    for name, exporter, record_spans, share in sorted(CONFIGS, key=lambda c: c[1] == "memory"):
        telemetry.add_exporter(exporter)
        for round_ in range(rounds):
            log = logs[share]
            runtime = ConsumerRuntime(
                InMemoryConsumerSource(log, ["b.task.changes"]),
                InMemoryProjectionStore(),
                EventDecoder(registry, build_registry(disabled=()), entity_of_topic("b")),
                DeadLetterQueue(InMemoryLogWriter(log), "b.dlq"),
                RuntimeConfig("bench", max_records=500, poll_timeout_ms=1, record_spans=record_spans == "true"),
            )
            stop = asyncio.Event()
            started = time.perf_counter()
            task = asyncio.create_task(runtime.run(stop))
            while runtime.stats.applied < count:  # noqa: ASYNC110 - polling a counter the runtime owns
                await asyncio.sleep(0.01)
            seconds = time.perf_counter() - started
            stop.set()
            await task
            if telemetry.memory is not None:
                telemetry.memory.clear()
            print(f"fakes, round {round_ + 1}: {name:20s} {count / seconds:8.0f} events/s", flush=True)


async def main() -> None:
    """Produce once, project once per configuration, print the rates."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--fakes", action="store_true", help="in this process, on the in-memory log and store")
    args = parser.parse_args()
    if args.fakes:
        await on_fakes(args.events, args.rounds)
        return
    prefixes: dict[float, Settings] = {}
    for share in sorted({config[3] for config in CONFIGS}):
        prefixes[share] = Settings(topic_prefix=f"bench-{uuid.uuid4().hex[:8]}", change_topic_partitions=3)
        await produce(prefixes[share], args.events, share)
    for round_ in range(args.rounds):
        for name, exporter, record_spans, share in CONFIGS:
            rate = await project(prefixes[share], args.events, exporter, record_spans)
            print(f"round {round_ + 1}: {name:20s} {rate:8.0f} events/s", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
