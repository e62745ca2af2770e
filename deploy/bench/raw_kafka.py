"""The raw limits the bench compares Keel with: Kafka clients used directly, with Keel's durability settings.

Every producer here uses acks=all and idempotence (what `AioKafkaLogWriter` uses), so a baseline never wins
by being less durable: aiokafka with the writer's linger and batch size, confluent-kafka's `Producer` with
the same linger, and a bare produce→consume loop for throughput and for round-trip latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaPartition
from confluent_kafka import KafkaError as ConfluentError
from confluent_kafka import Producer

from keel.event_log import OutgoingRecord
from keel.kafka_adapter import client_options, librdkafka_options
from keel.settings import Settings

__all__ = ["aiokafka_send_rate", "confluent_send_rate", "produce_consume", "round_trip_latencies"]

LINGER_MS = 5  # AioKafkaLogWriter's default
MAX_BATCH_BYTES = 256 * 1024


def _producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
        max_batch_size=MAX_BATCH_BYTES,
    )


async def aiokafka_send_rate(settings: Settings, streams: Sequence[Sequence[Sequence[OutgoingRecord]]]) -> float:
    """Records/s: one sender per stream, each sending its chunks in turn and awaiting every ack of a chunk.

    The same shape of traffic as devices pushing batches to the gateway: `streams[d]` is device d's pushes.
    """
    producer = _producer(settings)
    await producer.start()
    try:
        topics = {record.topic for stream in streams for chunk in stream for record in chunk}
        for topic in topics:
            await producer.partitions_for(topic)  # metadata outside the measurement

        async def sender(stream: Sequence[Sequence[OutgoingRecord]]) -> None:
            for chunk in stream:
                futures = [
                    await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers) or None) for r in chunk
                ]
                await asyncio.gather(*futures)

        count = sum(len(chunk) for stream in streams for chunk in stream)
        began = time.perf_counter()
        await asyncio.gather(*(sender(stream) for stream in streams))
        return count / (time.perf_counter() - began)
    finally:
        await producer.stop()


def _confluent_config(settings: Settings) -> dict[str, Any]:
    return {**librdkafka_options(settings), "acks": "all", "enable.idempotence": True, "linger.ms": LINGER_MS}


def _confluent_rate(settings: Settings, records: Sequence[OutgoingRecord]) -> float:
    producer = Producer(_confluent_config(settings))
    # Metadata and the idempotent producer id (InitProducerId) outside the measurement.
    first = records[0]
    producer.produce(first.topic, first.value, first.key, headers=list(first.headers))
    if producer.flush(30):
        raise RuntimeError("confluent-kafka: the warm-up record was not delivered")
    failures: list[str] = []

    def delivered(error: ConfluentError | None, message: object) -> None:
        del message
        if error is not None:
            failures.append(str(error))

    began = time.perf_counter()
    for record in records:
        while True:
            try:
                producer.produce(
                    record.topic, record.value, record.key, headers=list(record.headers), on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.005)
        producer.poll(0)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - began
    if remaining or failures:
        raise RuntimeError(f"confluent-kafka: {remaining} undelivered, errors: {failures[:3]}")
    return len(records) / elapsed


async def confluent_send_rate(settings: Settings, records: Sequence[OutgoingRecord]) -> float:
    """Records/s of confluent-kafka's `Producer` (librdkafka, its own threads) sending `records`, all acked."""
    return await asyncio.to_thread(_confluent_rate, settings, records)


async def _consumer(settings: Settings, topic: str, partitions: int) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=200,  # KafkaSource's
    )
    await consumer.start()
    assigned = [KafkaPartition(topic, p) for p in range(partitions)]
    consumer.assign(assigned)
    ends = await consumer.end_offsets(assigned)
    for partition, end in ends.items():
        consumer.seek(partition, end)
    return consumer


async def produce_consume(settings: Settings, records: Sequence[OutgoingRecord], partitions: int) -> float:
    """Records/s from the first send until a consumer has received every record (produced concurrently)."""
    topic = records[0].topic
    consumer = await _consumer(settings, topic, partitions)
    producer = _producer(settings)
    await producer.start()
    try:
        await producer.partitions_for(topic)
        received = 0

        async def consume() -> None:
            nonlocal received
            while received < len(records):
                batches = await consumer.getmany(timeout_ms=500, max_records=2_000)
                received += sum(len(batch) for batch in batches.values())

        began = time.perf_counter()
        reader = asyncio.create_task(consume())
        for start in range(0, len(records), 500):
            futures = [
                await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers) or None)
                for r in records[start : start + 500]
            ]
            await asyncio.gather(*futures)
        await asyncio.wait_for(reader, 120)
        return len(records) / (time.perf_counter() - began)
    finally:
        await producer.stop()
        await consumer.stop()


async def round_trip_latencies(
    settings: Settings, topic: str, partitions: int, *, value: bytes, rate: float, seconds: float
) -> list[float]:
    """Milliseconds from send to receipt of records sent at `rate`/s for `seconds` (bare aiokafka both ends).

    Each value carries its send time in its first 8 bytes; sends go out every 10 ms in small bursts, like
    pushes from many devices.
    """
    consumer = await _consumer(settings, topic, partitions)
    producer = _producer(settings)
    await producer.start()
    latencies: list[float] = []
    try:
        await producer.partitions_for(topic)
        total = max(1, int(rate * seconds))

        async def consume() -> None:
            while len(latencies) < total:
                batches = await consumer.getmany(timeout_ms=200, max_records=2_000)
                now = time.time()
                for batch in batches.values():
                    for record in batch:
                        (sent,) = struct.unpack_from(">d", record.value)
                        latencies.append((now - sent) * 1000)

        reader = asyncio.create_task(consume())
        tick = 0.01
        per_tick = rate * tick
        owed = 0.0
        sent = 0
        began = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        while sent < total:
            owed += per_tick
            while owed >= 1 and sent < total:
                owed -= 1
                payload = struct.pack(">d", time.time()) + value[8:]
                pending.append(await producer.send(topic, payload, key=str(sent).encode()))
                sent += 1
            began += tick
            await asyncio.sleep(max(0.0, began - time.monotonic()))
        await asyncio.gather(*pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 30)  # cancels the reader when records went missing
        return latencies
    finally:
        await producer.stop()
        await consumer.stop()
