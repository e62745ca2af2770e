"""The projector against real Kafka, registry and PostgreSQL: poison, redelivery, outages, rebalances, partners."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from consumers.dead_letter import ERROR_CLASS, ERROR_MESSAGE, SCHEMA_ID, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC
from keel.event_log import OutgoingRecord
from keel.kafka_adapter import AioKafkaLogWriter, librdkafka_options
from keel.settings import Settings
from projections.pg_adapter import Pool
from projections.pg_admin_adapter import PgAdmin
from schemas.catalog import default_catalog, subject_for
from schemas.codec import frame
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.consumers.helpers import (
    EventFactory,
    encoder_for,
    expected_decision_ids,
    expected_digests,
    until,
    write_events,
)
from tests.consumers.projector_rig import count, read_topic, running_projector, wait_applied
from tests.support.naming import unique
from tests.support.services import Services

pytestmark = pytest.mark.integration


async def digests(pool: Pool, settings: Settings) -> dict[str, tuple[int, str]]:
    found = await PgAdmin(pool).digests(settings.pg_schema, ["task"])
    return {d.tenant_id: (d.count, d.digest) for d in found}


async def decision_ids(pool: Pool, settings: Settings) -> set[str]:
    async with pool.acquire() as connection:
        rows = await connection.fetch(f'SELECT decision_id FROM "{settings.pg_schema}".conflict_decisions')
    return {r["decision_id"] for r in rows}


async def test_poison_goes_to_the_dlq_with_reasons_while_the_partition_moves_on(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
) -> None:
    factory = EventFactory()
    encoder = encoder_for(keel_settings, registry)
    topic = keel_settings.topic_for("task")
    good = [factory.event("dev-a", "same-entity", title=f"v{i}") for i in range(6)]
    valid = await encoder.encode(good[0])
    poison = [b"\x02" + valid[1:], frame(2_000_000_000, valid[5:]), valid[:-4]]
    records = [await encoder.record(e) for e in good[:3]]
    records += [OutgoingRecord(topic, b"same-entity", value) for value in poison]
    records += [await encoder.record(e) for e in good[3:]]
    await log_writer.write(records)
    async with running_projector(keel_settings) as projector:
        await wait_applied(pool, keel_settings.pg_schema, 6)
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"http://127.0.0.1:{projector.health.port}/health")).json()
    assert health["dead_lettered"] == 3
    letters = await read_topic(keel_settings, keel_settings.dlq_topic, 3)
    headers = [{k: v.decode() for k, v in r.headers} for r in letters]
    assert [h[ERROR_CLASS] for h in headers] == ["DecodeError", "UnknownSchemaError", "DecodeError"]
    assert "bad magic byte 0x02" in headers[0][ERROR_MESSAGE]
    assert "2000000000" in headers[1][ERROR_MESSAGE]
    assert headers[1][SCHEMA_ID] == "2000000000"
    assert "truncated" in headers[2][ERROR_MESSAGE]
    assert {h[SOURCE_TOPIC] for h in headers} == {topic}
    assert len({h[SOURCE_PARTITION] for h in headers}) == 1
    assert [int(h[SOURCE_OFFSET]) for h in headers] == [3, 4, 5]
    assert [r.value for r in letters] == poison
    assert await digests(pool, keel_settings) == expected_digests(good)


async def test_redelivered_events_are_no_ops_and_throughput_is_measured(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
) -> None:
    factory = EventFactory(seed=11)
    events = factory.random_task_events(3_000, devices=8, entities=300)
    encoder = encoder_for(keel_settings, registry)
    await write_events(log_writer, encoder, events)
    await write_events(log_writer, encoder, events[:500])  # a producer retried: same (device_id, device_seq)
    async with running_projector(keel_settings) as projector:
        began = time.perf_counter()
        await wait_applied(pool, keel_settings.pg_schema, 3_000)
        runtime = projector.supervisor.runtime if projector.supervisor else None
        assert runtime is not None
        await until(lambda: runtime.stats.duplicates >= 500, what="redeliveries counted")
        elapsed = time.perf_counter() - began
        assert runtime.stats.duplicates == 500
    print(f"\nprojected 3,500 records (3,000 events + 500 redeliveries) in {elapsed:.2f}s: {3_500 / elapsed:,.0f}/s")
    schema = keel_settings.pg_schema
    assert await count(pool, schema, "SELECT count(*) FROM {schema}.outbox WHERE kind = 'change'") == 3_000
    assert await digests(pool, keel_settings) == expected_digests(events)
    assert await decision_ids(pool, keel_settings) == expected_decision_ids(events)


def applied_at_least(pool: Pool, settings: Settings, wanted: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await count(pool, settings.pg_schema, "SELECT count(*) FROM {schema}.applied_ops") >= wanted

    return check


@pytest.fixture
async def pg_proxy(services: Services) -> AsyncIterator[tuple[str, str]]:
    """A Toxiproxy proxy of our own in front of PostgreSQL: (proxy name, DSN through it)."""
    assert services.toxiproxy_url is not None
    name = unique("pg-projector")
    api = httpx.AsyncClient(base_url=services.toxiproxy_url, timeout=10)
    database = urlsplit(services.database_url)  # the stack's own port (the secure stack's differs)
    upstream = f"{database.hostname}:{database.port}"
    created = await api.post("/proxies", json={"name": name, "listen": "127.0.0.1:0", "upstream": upstream})
    created.raise_for_status()
    port = int(created.json()["listen"].rsplit(":", 1)[1])
    credentials = f"{database.username}:{database.password}@" if database.password else f"{database.username}@"
    try:
        yield name, urlunsplit(database._replace(netloc=f"{credentials}127.0.0.1:{port}"))
    finally:
        await api.delete(f"/proxies/{name}")
        await api.aclose()


async def test_a_postgresql_outage_mid_stream_pauses_and_resumes_with_nothing_lost(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
    pg_proxy: tuple[str, str],
    services: Services,
) -> None:
    name, proxied_dsn = pg_proxy
    settings = keel_settings.model_copy(update={"database_url": proxied_dsn, "projector_batch_max_records": 20})
    factory = EventFactory(seed=21)
    events = factory.random_task_events(1_500, devices=5, entities=100)
    encoder = encoder_for(settings, registry)
    await write_events(log_writer, encoder, events[:500])
    toxiproxy = httpx.AsyncClient(base_url=services.toxiproxy_url or "", timeout=10)
    try:
        async with running_projector(settings) as projector:
            await write_events(log_writer, encoder, events[500:])
            await until(applied_at_least(pool, settings, 300))
            (await toxiproxy.post(f"/proxies/{name}", json={"enabled": False})).raise_for_status()
            runtime = projector.supervisor.runtime if projector.supervisor else None
            assert runtime is not None
            await until(lambda: runtime.stats.transient_failures >= 3, what="backing off")
            assert runtime.waiting_on is not None
            assert "postgresql" in runtime.waiting_on
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"http://127.0.0.1:{projector.health.port}/ready")
            assert ready.status_code == 503
            (await toxiproxy.post(f"/proxies/{name}", json={"enabled": True})).raise_for_status()
            await until(applied_at_least(pool, settings, 1_000))
            failures = runtime.stats.transient_failures
            async with pool.acquire() as connection:  # and now the server "restarts" under the projector
                killed = await connection.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                    f"keel-projector {settings.consumer_group}",
                )
            assert killed >= 1
            await wait_applied(pool, settings.pg_schema, 1_500)
            assert runtime.stats.dead_lettered == 0
            print(f"\ntransient failures: {failures} while cut off; {runtime.stats.transient_failures} in all")
    finally:
        await toxiproxy.aclose()
    assert await count(pool, settings.pg_schema, "SELECT count(*) FROM {schema}.outbox WHERE kind = 'change'") == 1_500
    assert await digests(pool, keel_settings) == expected_digests(events)


async def test_two_projectors_rebalancing_apply_each_event_once(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
) -> None:
    settings = keel_settings.model_copy(update={"projector_batch_max_records": 40})
    factory = EventFactory(seed=31)
    events = factory.random_task_events(2_400, devices=6, entities=200)
    encoder = encoder_for(settings, registry)
    await write_events(log_writer, encoder, events[:800])
    async with running_projector(settings) as first:
        await until(applied_at_least(pool, settings, 200))
        async with running_projector(settings) as second:
            second_runtime = second.supervisor.runtime if second.supervisor else None
            assert second_runtime is not None
            task_topic = settings.topic_for("task")
            await until(lambda: any(p.topic == task_topic for p in second_runtime.positions), what="rebalanced")
            await write_events(log_writer, encoder, events[800:1_600])
            await until(applied_at_least(pool, settings, 1_200))
            second_runtime = second.supervisor.runtime if second.supervisor else None
        await write_events(log_writer, encoder, events[1_600:])
        await wait_applied(pool, settings.pg_schema, 2_400)
        first_runtime = first.supervisor.runtime if first.supervisor else None
    assert first_runtime is not None
    assert second_runtime is not None
    assert second_runtime.stats.applied > 0, "the second member never got a partition"
    schema = settings.pg_schema
    assert await count(pool, schema, "SELECT count(*) FROM {schema}.outbox WHERE kind = 'change'") == 2_400
    distinct = "SELECT count(DISTINCT event_id) FROM {schema}.outbox WHERE kind = 'change'"
    assert await count(pool, schema, distinct) == 2_400
    assert await digests(pool, keel_settings) == expected_digests(events)


async def test_events_from_a_partners_plain_avro_serializer_are_projected(
    keel_settings: Settings, pool: Pool, registry: ConfluentSchemaRegistry, change_topics: list[str]
) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic = keel_settings.topic_for("task")
    schema_text = default_catalog().schema("task", 2).text
    await registry.register(subject_for(topic), schema_text)  # the partner registers once, then serializes
    producer = Producer({**librdkafka_options(keel_settings), "acks": "all"})
    with SchemaRegistryClient({"url": keel_settings.registry_url}) as client:
        serializer = AvroSerializer(client, schema_text, conf={"auto.register.schemas": False})
        for index in range(5):
            record = {
                "event_id": str(uuid.uuid4()),
                "tenant_id": "partner-tenant",
                "device_id": "partner-system",
                "device_seq": index + 1,
                "entity_type": "task",
                "entity_id": f"p-{index}",
                "op": "UPSERT",
                "hlc": {"physical_ms": 1_750_000_000_000 + index, "logical": 0, "node": "partner-system"},
                "schema_version": 2,
                "changed_fields": ["title", "due", "priority"],
                "payload": {
                    "title": f"from partner {index}",
                    "description": "",
                    "due": f"2025-08-0{index + 1}",
                    "status": "TODO",
                    "project_id": None,
                    "priority": 1,
                },
            }
            value = serializer(record, SerializationContext(topic, MessageField.VALUE))
            producer.produce(topic, key=record["entity_id"].encode(), value=value)
    assert producer.flush(20) == 0
    async with running_projector(keel_settings):
        await wait_applied(pool, keel_settings.pg_schema, 5)
    async with pool.acquire() as connection:
        rows = await connection.fetch(
            f'SELECT entity_id, title, due, due_at FROM "{keel_settings.pg_schema}".task ORDER BY entity_id'
        )
    assert [(r["entity_id"], r["title"], r["due"]) for r in rows] == [
        (f"p-{i}", f"from partner {i}", f"2025-08-0{i + 1}") for i in range(5)
    ]
    assert all(r["due_at"] is not None for r in rows)  # migrated v2 → v3 on the way in
