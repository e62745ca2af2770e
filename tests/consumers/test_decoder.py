"""Decoding: writer schema by id, validation in the writer's version, migration to the current version."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.decoder import EventDecoder, Undecodable, entity_of_topic, to_payload_form
from keel.errors import DecodeError, ServiceUnavailableError, UnknownSchemaError, ValidationError
from keel.event_log import LogRecord
from projections.batch import SourcedEvent
from schemas.catalog import default_catalog
from schemas.codec import decode_body, frame, unframe
from schemas.domain_migrations import build_registry, normalize_task, upcast_task_v2_v3
from schemas.envelope import ChangeEvent
from schemas.event_encoder import EventEncoder
from schemas.registry import InMemorySchemaRegistry
from schemas.resolution import field_mapping
from tests.consumers.helpers import EventFactory

PREFIX = "k"
TOPIC = "k.task.changes"


def record(value: bytes | None, topic: str = TOPIC, offset: int = 0) -> LogRecord:
    return LogRecord(topic, 0, offset, b"key", value, (), 0)


@pytest.fixture
def registry() -> InMemorySchemaRegistry:
    return InMemorySchemaRegistry()


@pytest.fixture
def encoder(registry: InMemorySchemaRegistry) -> EventEncoder:
    return EventEncoder(registry, lambda entity: f"{PREFIX}.{entity}.changes", auto_register=True)


@pytest.fixture
def decoder(registry: InMemorySchemaRegistry) -> EventDecoder:
    return EventDecoder(registry, build_registry(disabled=()), entity_of_topic(PREFIX))


async def decoded_event(decoder: EventDecoder, value: bytes) -> SourcedEvent:
    result = await decoder.decode(record(value))
    assert isinstance(result, SourcedEvent), result
    return result


async def test_every_version_arrives_in_the_current_shape(encoder: EventEncoder, decoder: EventDecoder) -> None:
    factory = EventFactory()
    v1 = factory.event("d", "t1", version=1, title="a", notes="n", due="2025-07-01", status="DONE")
    v2 = factory.event("d", "t2", version=2, title="b", description="x", due="someday", priority=2)
    v3 = factory.event("d", "t3", version=3, due_at=1_751_328_000_000, labels=["x"])
    one = await decoded_event(decoder, await encoder.encode(v1))
    assert one.event.schema_version == 3
    assert one.event.payload is not None
    assert one.event.payload["description"] == "n"
    assert one.event.payload["due_at"] == 1_751_328_000_000
    assert set(one.event.changed_fields) == {"title", "description", "due", "status", "due_at"}
    two = await decoded_event(decoder, await encoder.encode(v2))
    assert two.cautions == ("due: 'someday' names no absolute date; due_at left empty",)
    three = await decoded_event(decoder, await encoder.encode(v3))
    assert three.event.payload is not None
    assert three.event.payload["due"] == "2025-07-01"  # the deprecated field follows due_at
    assert three.schema_id is not None
    assert (three.position.topic, three.position.offset) == (TOPIC, 0)


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
task_values = {
    1: {
        "title": text,
        "notes": text,
        "due": st.none() | st.sampled_from(["2025-01-02", "tomorrow", "3/4/2025"]),
        "status": st.sampled_from(["TODO", "DONE"]),
        "project_id": st.none() | text,
    },
    2: {
        "title": text,
        "description": text,
        "due": st.none() | st.sampled_from(["2025-01-02", "Jan 5, 2026"]),
        "status": st.sampled_from(["TODO", "DOING", "DONE"]),
        "priority": st.integers(0, 3),
    },
    3: {
        "title": text,
        "due_at": st.none() | st.integers(0, 4_000_000_000_000),
        "labels": st.lists(text, max_size=3),
        "status": st.sampled_from(["TODO", "DOING", "DONE"]),
        "priority": st.integers(0, 3),
    },
}


@st.composite
def task_events(draw: st.DrawFn) -> ChangeEvent:
    version = draw(st.sampled_from([1, 2, 3]))
    names = draw(st.sets(st.sampled_from(sorted(task_values[version])), min_size=1))
    payload = {name: draw(task_values[version][name]) for name in names}
    explicit = draw(st.booleans())
    event = EventFactory(seed=draw(st.integers(0, 99))).event("dev", "t1", version=version, **payload)
    if not explicit:  # empty changed_fields: "every field of the writer's version"
        schema = default_catalog().schema("task", version)
        full = {spec.name: spec.default for spec in schema.fields} | payload
        event = dataclasses.replace(event, payload=full, changed_fields=())
    return event


@settings(max_examples=120, deadline=None)
@given(task_events())
async def test_writer_decode_then_migrate_equals_reader_resolution_then_steps(event: ChangeEvent) -> None:
    registry = InMemorySchemaRegistry()
    encoder = EventEncoder(registry, lambda entity: f"{PREFIX}.{entity}.changes", auto_register=True)
    decoder = EventDecoder(registry, build_registry(disabled=()), entity_of_topic(PREFIX))
    value = await encoder.encode(event)
    ours = await decoded_event(decoder, value)

    catalog = default_catalog()
    writer, current = catalog.schema("task", event.schema_version), catalog.schema("task")
    _, body = unframe(value)
    resolved: dict[str, Any] = to_payload_form(decode_body(body, writer.parsed, current.parsed))["payload"]
    changed = event.changed_fields or writer.field_names
    mapping = field_mapping(writer, current)
    changed = tuple(dict.fromkeys(mapping[name] for name in changed if name in mapping))
    if event.schema_version <= 2:
        step = upcast_task_v2_v3(resolved, changed)
        resolved, changed = step.payload, step.changed_fields
    normal = normalize_task(resolved, changed)
    assert ours.event.payload == normal.payload
    assert ours.event.changed_fields == normal.changed_fields


async def test_poison_records_are_undecodable_with_the_reason(
    registry: InMemorySchemaRegistry, encoder: EventEncoder, decoder: EventDecoder
) -> None:
    factory = EventFactory()
    good = await encoder.encode(factory.event("d", "t1", title="ok"))
    cases: list[tuple[LogRecord, type[Exception], str]] = [
        (record(b"\x01" + good[1:]), DecodeError, "bad magic byte"),
        (record(frame(987_654, good[5:])), UnknownSchemaError, "not known"),
        (record(good[:-3]), DecodeError, "truncated"),
        (record(None), DecodeError, "no value"),
        (record(good, topic="k.project.changes"), ValidationError, "a 'task' event on topic k.project.changes"),
        (record(await encoder.encode(factory.event("d", "t1", priority=9))), ValidationError, "outside 0..3"),
        (record(await encoder.encode(factory.event("d", "t1", title="a\x00b"))), ValidationError, "NUL"),
        (record(await encoder.encode(factory.event("", "t1", title="no device"))), ValidationError, "device_id"),
    ]
    for bad, kind, words in cases:
        result = await decoder.decode(bad)
        assert isinstance(result, Undecodable), words
        assert isinstance(result.error, kind), (words, result.error)
        assert words in str(result.error)
    invalid = await decoder.decode(cases[5][0])
    assert isinstance(invalid, Undecodable)
    assert invalid.envelope is not None  # the envelope was readable: the device can be told
    assert invalid.schema_id is not None


async def test_an_unreachable_registry_is_transient_not_a_dead_letter(
    registry: InMemorySchemaRegistry, encoder: EventEncoder
) -> None:
    value = await encoder.encode(EventFactory().event("d", "t1", title="ok"))
    fresh = EventDecoder(registry, build_registry(disabled=()), entity_of_topic(PREFIX))
    registry.available = False
    with pytest.raises(ServiceUnavailableError):
        await fresh.decode(record(value))
    registry.available = True
    assert isinstance(await fresh.decode(record(value)), SourcedEvent)
