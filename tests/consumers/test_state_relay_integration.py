"""The state relay on the real stack: projector + relay, read back by a partner's plain confluent-kafka client.

Two devices write the same task concurrently (a conflict), another task is created and deleted, and a second
tenant uses the same entity id. A first relay dies after Kafka acknowledged its first page but before it
stored its cursor; a second one resumes. A plain `Consumer` with `AvroDeserializer` (the writer schema by
the id in each record) must then see, for every key, a last record equal to the projection's visible row —
and `deleted` for the deleted task. Duplicates from the crash are allowed (at least once).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumers.state_relay_service import StateRelayService
from keel.kafka_adapter import AioKafkaLogWriter, librdkafka_options
from keel.settings import Settings
from projections.entity_tables import entity_tables
from projections.outbox import START
from projections.pg_adapter import Pool
from projections.pg_store_adapter import PgProjectionStore
from projections.state_feed_pg_adapter import PgStateFeed
from projections.topics import state_topic
from schemas.codec import to_payload_form
from schemas.envelope import Op
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.consumers.helpers import EventFactory, encoder_for, write_events
from tests.consumers.projector_rig import running_projector, wait_applied
from tests.projections.fixtures import feed_settled

pytestmark = pytest.mark.integration


class RelayCrashError(Exception):
    """The first relay dies between Kafka's acknowledgement and its cursor store."""


async def _crash() -> None:
    raise RelayCrashError


async def relay_until_idle(settings: Settings, pool: Pool, *, crash: bool) -> StateRelayService:
    """Run one relay service until it has relayed the whole feed (or crashed after its first ack)."""
    service = StateRelayService(settings, health_port=0, after_produce=_crash if crash else None)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    if crash:
        with pytest.raises(RelayCrashError):
            await asyncio.wait_for(task, 60)
        return service
    feed = PgStateFeed(pool, settings.pg_schema)
    try:
        await asyncio.wait_for(service.ready_event.wait(), 60)
        for _ in range(600):
            relay = service.relay
            if relay is not None and relay.cursor is not None and not (await feed.read(relay.cursor)).changes:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the relay did not catch up with the feed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    return service


def read_state_topic(settings: Settings, topic: str) -> list[tuple[str, dict[str, Any], dict[str, bytes]]]:
    """Every record of a state topic, as a partner reads it: plain Consumer, AvroDeserializer, UTF-8 keys."""
    with SchemaRegistryClient({"url": settings.registry_url}) as registry:
        deserializer = AvroDeserializer(registry)
        consumer = Consumer(
            {
                **librdkafka_options(settings),
                "group.id": f"{settings.consumer_group}.partner",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = [TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions]
            ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
            consumer.assign(partitions)
            records: list[tuple[str, dict[str, Any], dict[str, bytes]]] = []
            done = {p for p, end in ends.items() if end == 0}
            for _ in range(300):
                if len(done) == len(ends):
                    break
                message = consumer.poll(0.1)
                if message is None:
                    continue
                assert message.error() is None, message.error()
                value = deserializer(message.value(), SerializationContext(topic, MessageField.VALUE))
                records.append((message.key().decode(), value, dict(message.headers() or [])))
                if message.offset() + 1 >= ends[message.partition()]:
                    done.add(message.partition())
            assert len(done) == len(ends), "did not reach the end of every partition"
            return records
        finally:
            consumer.close()


async def test_a_plain_client_reads_the_resolved_state_of_every_entity_after_a_relay_crash(
    keel_settings: Settings, pool: Pool, change_topics: list[str], log_writer: AioKafkaLogWriter
) -> None:
    del change_topics
    factory = EventFactory(seed=11)
    events = [
        factory.event("phone", "t1", title="from the phone", physical_ms=1_750_000_002_000, priority=1),
        factory.event("laptop", "t1", title="from the laptop", physical_ms=1_750_000_001_000, status="DOING"),
        factory.event("phone", "t2", title="short-lived"),
        factory.event("phone", "t1", tenant_id="tenant-b", title="same id, other tenant"),
        factory.event("laptop", "t3", title="untouched"),
    ]
    events.append(factory.event("laptop", "t2", op=Op.DELETE))
    registry = ConfluentSchemaRegistry(keel_settings.registry_url)
    try:
        async with running_projector(keel_settings):
            await write_events(log_writer, encoder_for(keel_settings, registry), events)
            await wait_applied(pool, keel_settings.pg_schema, len(events))
    finally:
        await registry.close()
    await feed_settled(pool, keel_settings.pg_schema)

    await relay_until_idle(keel_settings, pool, crash=True)
    feed = PgStateFeed(pool, keel_settings.pg_schema)
    assert await feed.load_cursor("state-relay") is None  # acked but not stored: the page goes out again
    service = await relay_until_idle(keel_settings, pool, crash=False)
    assert service.relay is not None
    assert service.relay.stats.snapshots == 0

    records = await asyncio.to_thread(read_state_topic, keel_settings, state_topic(keel_settings, "task"))
    last = {key: value for key, value, _ in records}
    store = PgProjectionStore(pool, keel_settings.pg_schema)
    visible = {f"{tenant}/{entity_id}": values for tenant, entity_id, values in await store.visible_rows("task")}
    assert set(last) == {"tenant-a/t1", "tenant-a/t2", "tenant-a/t3", "tenant-b/t1"}
    for key, value in last.items():
        tenant, entity_id = key.split("/")
        assert (value["tenant_id"], value["entity_id"], value["entity_type"]) == (tenant, entity_id, "task")
        if key == "tenant-a/t2":
            assert (value["deleted"], value["state"]) == (True, None)
        else:
            assert value["deleted"] is False
            assert to_payload_form(value["state"]) == visible[key]
    conflict = last["tenant-a/t1"]["state"]
    assert (conflict["title"], conflict["status"], conflict["priority"]) == ("from the phone", "DOING", 1)
    assert visible["tenant-a/t1"] == {**entity_tables()["task"].defaults(), **to_payload_form(conflict)}
    assert len(records) >= len(last)  # at least once: the crashed page may appear twice
    assert all(headers["keel-tenant"] == key.split("/")[0].encode() for key, _, headers in records)
    assert (await feed.read(START)).changes  # the relay never consumes the feed: devices still read it
