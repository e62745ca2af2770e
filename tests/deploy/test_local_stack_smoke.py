"""Smoke tests against the real local stack: Kafka, the schema registry and PostgreSQL do their jobs."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator

import asyncpg
import fastavro
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from keel.kafka_adapter import client_options
from tests.support.services import Services

pytestmark = pytest.mark.integration

TASK_V1 = {"type": "record", "name": "Task", "namespace": "smoke", "fields": [{"name": "title", "type": "string"}]}
TASK_V2_BREAKING = {
    "type": "record",
    "name": "Task",
    "namespace": "smoke",
    "fields": [{"name": "title", "type": "string"}, {"name": "owner", "type": "string"}],
}
TASK_V2_COMPATIBLE = {
    "type": "record",
    "name": "Task",
    "namespace": "smoke",
    "fields": [{"name": "title", "type": "string"}, {"name": "owner", "type": ["null", "string"], "default": None}],
}


async def test_idempotent_produce_then_consume(services: Services, topic_name: str, group_id: str) -> None:
    options = client_options(services.settings())  # TLS and SASL too on the secure stack
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**options, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic_name, f"v{i}".encode(), key=b"same-key") for i in range(5)]
    finally:
        await producer.stop()
    assert len({m.partition for m in sent}) == 1, "one key lands on one partition"
    assert [m.offset for m in sent] == list(range(5))

    consumer = AIOKafkaConsumer(
        topic_name,
        **options,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        while len(received) < 5:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "no records within 10 s"
            received.extend(r.value for records in batch.values() for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert received == [f"v{i}".encode() for i in range(5)], "per-key order is kept"


@pytest.fixture
def registry(services: Services) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient({"url": services.registry_url}) as client:
        yield client


def test_registry_rejects_incompatible_schema_for_backward_subject(
    registry: SchemaRegistryClient, subject_name: str
) -> None:
    client = registry
    first_id = client.register_schema(subject_name, Schema(json.dumps(TASK_V1), "AVRO"))
    client.set_compatibility(subject_name, "BACKWARD")
    assert client.get_compatibility(subject_name) == "BACKWARD"

    assert client.test_compatibility(subject_name, Schema(json.dumps(TASK_V2_BREAKING), "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject_name, Schema(json.dumps(TASK_V2_BREAKING), "AVRO"))
    assert refused.value.http_status_code == 409
    assert client.get_versions(subject_name) == [1], "the registry itself refused the breaking version"

    second_id = client.register_schema(subject_name, Schema(json.dumps(TASK_V2_COMPATIBLE), "AVRO"))
    assert second_id != first_id
    assert client.get_versions(subject_name) == [1, 2]
    # Canonical-hash lookups: the same schema with different whitespace is found, not re-registered.
    again = client.register_schema(subject_name, Schema(json.dumps(TASK_V1, indent=4), "AVRO"))
    assert again == first_id


def test_confluent_wire_format_round_trip(registry: SchemaRegistryClient, subject_name: str) -> None:
    client = registry
    schema_id = client.register_schema(subject_name, Schema(json.dumps(TASK_V1), "AVRO"))
    parsed = fastavro.parse_schema(TASK_V1)

    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, {"title": "buy milk"})
    frame = b"\x00" + struct.pack(">I", schema_id) + body.getvalue()

    magic, found_id = frame[0], struct.unpack(">I", frame[1:5])[0]
    assert magic == 0
    writer = json.loads(client.get_schema(found_id).schema_str)
    record = fastavro.schemaless_reader(io.BytesIO(frame[5:]), fastavro.parse_schema(writer), parsed)
    assert record == {"title": "buy milk"}


async def test_asyncpg_round_trip(services: Services, pg_schema: str) -> None:
    connection = await asyncpg.connect(services.database_url)
    try:
        await connection.execute(f"CREATE SCHEMA {pg_schema}")
        await connection.execute(f"CREATE TABLE {pg_schema}.t (id int PRIMARY KEY, body jsonb)")
        await connection.execute(f"INSERT INTO {pg_schema}.t VALUES ($1, $2)", 1, json.dumps({"a": 1}))
        row = await connection.fetchrow(f"SELECT id, body FROM {pg_schema}.t")
        assert row is not None
        assert (row["id"], json.loads(row["body"])) == (1, {"a": 1})
    finally:
        await connection.execute(f"DROP SCHEMA IF EXISTS {pg_schema} CASCADE")
        await connection.close()
