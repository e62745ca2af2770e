"""What a partner platform does with Keel's topics (docs/partners.md), end to end on the real services.

The partner's side uses plain confluent-kafka only — `Producer` + `AvroSerializer` (TopicNameStrategy, the
schema Keel registered, fetched from the registry, auto-registration off) and `Consumer` + `AvroDeserializer`.
Nothing of Keel is on that path but the topic name. Keel's side is the real thing: the gateway (which
registers the schemas at start), the projector, and an enrolled device pulling through the gateway.

On the secure stack (`make test-secure`) the partner's client speaks SASL_SSL/SCRAM with the test
session's principal (tests/support/services.py): `librdkafka_options` is exactly the `KAFKA` dict of
docs/partners.md § Access.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from keel.kafka_adapter import librdkafka_options
from tests.producers.live import eventually, live_keel
from tests.support.naming import unique
from tests.support.services import Services

pytestmark = pytest.mark.integration

PARTNER_DEVICE = "partner-example:crm"  # a device id of the partner's own (docs/partners.md § Produce a change)
PARTNER_VERSION = 2  # the stable task version the partner codes against (docs/asyncapi.yaml, x-keel-status)
PARTNER_PAYLOAD_FIELDS = ["title", "description", "due", "status", "project_id", "priority"]


def _payload_fields(schema_str: str) -> list[str]:
    """Field names of the payload record of a registered change schema (the non-null branch of `payload`)."""
    schema = json.loads(schema_str)
    payload = next(field for field in schema["fields"] if field["name"] == "payload")
    record = next(branch for branch in payload["type"] if branch != "null")
    return [field["name"] for field in record["fields"]]


def partner_produce(kafka: dict[str, str], registry_url: str, topic: str, changes: list[dict[str, Any]]) -> None:
    """Serialize with the registered schema (looked up under `<topic>-value`, never registered) and produce."""
    context = SerializationContext(topic, MessageField.VALUE)
    with SchemaRegistryClient({"url": registry_url}) as registry:
        registered = registry.get_version(f"{topic}-value", PARTNER_VERSION)
        assert _payload_fields(registered.schema.schema_str) == PARTNER_PAYLOAD_FIELDS, "not the version coded for"
        serializer = AvroSerializer(registry, registered.schema.schema_str, conf={"auto.register.schemas": False})
        # murmur2 like Keel's producers, so a key lands on the same partition whoever writes it.
        producer = Producer({**kafka, "acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random"})
        for change in changes:
            headers = {"keel-tenant": change["tenant_id"], "keel-device": change["device_id"]}
            producer.produce(
                topic, key=change["entity_id"].encode(), value=serializer(change, context), headers=headers
            )
        assert producer.flush(30) == 0, "the broker did not acknowledge every change"


def partner_consume(
    kafka: dict[str, str], registry_url: str, topic: str, group: str, entity_ids: set[str], timeout_s: float = 60.0
) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Entity id → (decoded event, headers) of the newest event of each wanted entity, read with a plain consumer."""
    found: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
    with SchemaRegistryClient({"url": registry_url}) as registry:
        deserializer = AvroDeserializer(registry)  # the writer schema by the id in each record
        consumer = Consumer({**kafka, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + timeout_s
            while not entity_ids <= found.keys():
                assert time.monotonic() < deadline, f"read {sorted(found)} of {sorted(entity_ids)} within {timeout_s}s"
                message = consumer.poll(0.5)
                if message is None:
                    continue
                assert message.error() is None, message.error()
                event = deserializer(message.value(), SerializationContext(topic, MessageField.VALUE))
                headers = {name: value.decode() for name, value in message.headers() or [] if value is not None}
                found[event["entity_id"]] = (event, headers)
                consumer.commit(message=message, asynchronous=False)
        finally:
            consumer.close()
    return found


def partner_change(tenant_id: str, entity_id: str, seq: int, title: str) -> dict[str, Any]:
    """A task change as docs/partners.md shows it: the partner's device id and sequence, a v2 payload."""
    now_ms = int(time.time() * 1000)
    return {
        "event_id": str(uuid.uuid4()),
        "tenant_id": tenant_id,
        "device_id": PARTNER_DEVICE,
        "device_seq": seq,
        "entity_type": "task",
        "entity_id": entity_id,
        "op": "UPSERT",
        "hlc": {"physical_ms": now_ms, "logical": 0, "node": PARTNER_DEVICE},
        "base_hlc": None,
        "schema_version": PARTNER_VERSION,
        "changed_fields": ["title", "status", "priority"],
        "payload": {
            "title": title,
            "description": "",
            "due": None,
            "status": "DOING",
            "project_id": None,
            "priority": 2,
        },
        "override": None,
        "prev_hash": None,
        "hash": None,
        "signature": None,
    }


async def test_a_partner_writes_with_plain_avro_and_reads_keels_events_with_a_plain_consumer(
    services: Services, tmp_path: Path
) -> None:
    async with live_keel(services) as keel:  # gateway (schemas registered at start) and projector
        settings = keel.settings
        topic = settings.topic_for("task")
        kafka = librdkafka_options(settings)
        device = await keel.device(tmp_path / "device.db", tenant_id="acme")
        await device.start()

        # A change from a device: Keel produces it (gateway) — the partner will read it.
        device.upsert("task", "from-device", {"title": "written on a device", "priority": 1})
        await keel.wait_projected(device)

        # The partner's changes: projected into PostgreSQL and delivered to the device through the gateway.
        changes = [partner_change("acme", f"from-partner-{n}", n + 1, f"partner task {n}") for n in range(3)]
        await asyncio.to_thread(partner_produce, kafka, settings.registry_url, topic, changes)

        async def device_has_them() -> bool:
            return all(device.get("task", change["entity_id"]) is not None for change in changes)

        await eventually(device_has_them, "the partner's changes on the device (pull through the gateway)")
        for change in changes:
            on_device = device.get("task", change["entity_id"])
            assert on_device is not None
            assert (on_device["title"], on_device["status"], on_device["priority"]) == (
                change["payload"]["title"],
                "DOING",
                2,
            )
        assert await keel.applied_seqs(PARTNER_DEVICE) == [1, 2, 3], "each change applied exactly once"
        rows = await keel.fetch("SELECT entity_id, title, status, deleted FROM {schema}.task ORDER BY entity_id")
        assert [(r["entity_id"], r["title"], r["status"], r["deleted"]) for r in rows] == [
            ("from-device", "written on a device", "TODO", False),
            *[(c["entity_id"], c["payload"]["title"], "DOING", False) for c in changes],
        ]

        # The partner reads everything back with a plain consumer in a group of its own.
        wanted = {"from-device", *(change["entity_id"] for change in changes)}
        group = unique("partner-example.sync")
        read = await asyncio.to_thread(partner_consume, kafka, settings.registry_url, topic, group, wanted)

    event, headers = read["from-device"]  # produced by Keel's gateway, decoded by AvroDeserializer alone
    assert (event["tenant_id"], event["device_id"], event["entity_type"], event["op"]) == (
        "acme",
        device.device_id,
        "task",
        "UPSERT",
    )
    assert (event["payload"]["title"], event["payload"]["priority"]) == ("written on a device", 1)
    assert event["device_seq"] == 1
    assert isinstance(event["event_id"], uuid.UUID)
    assert (headers["keel-tenant"], headers["keel-device"]) == ("acme", device.device_id)
    assert int(headers["keel-schema-version"]) == event["schema_version"]
    assert int(headers["keel-accepted-at-ms"]) > 0
    for change in changes:  # the partner's own writes come back as written
        echoed, _ = read[change["entity_id"]]
        assert str(echoed["event_id"]) == change["event_id"]
        assert echoed["payload"] == change["payload"]
