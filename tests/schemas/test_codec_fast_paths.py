"""The codec's fast paths give exactly what the plain paths give: bytes, decoded records and errors."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.errors import DecodeError
from schemas.catalog import default_catalog
from schemas.codec import (
    decode_body,
    encode_body,
    read_payload_form,
    read_plan,
    to_payload_form,
    union_branches,
    with_branches,
)
from tests.schemas.strategies import change_events, every_version

CATALOG = default_catalog()
VERSIONS = every_version(CATALOG)
IDS = [f"{e}-v{v}" for e, v in VERSIONS]


def _plain_body(record: dict[str, Any], parsed: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    return buffer.getvalue()


@pytest.mark.parametrize(("entity", "version"), VERSIONS, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_branch_hints_encode_the_same_bytes(entity: str, version: int, data: st.DataObject) -> None:
    event = data.draw(change_events(CATALOG, entity, version))
    schema = CATALOG.schema(entity, version)
    hinted = with_branches(event.to_avro(), union_branches(schema.parsed))
    assert encode_body(hinted, schema.parsed) == _plain_body(event.to_avro(), schema.parsed)


@pytest.mark.parametrize(("entity", "version"), VERSIONS, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_read_plan_reads_what_decoding_then_converting_reads(entity: str, version: int, data: st.DataObject) -> None:
    event = data.draw(change_events(CATALOG, entity, version))
    schema = CATALOG.schema(entity, version)
    body = encode_body(event.to_avro(), schema.parsed)
    plan = read_plan(json.loads(schema.text))
    assert not plan.generic
    assert read_payload_form(body, plan, 7) == to_payload_form(decode_body(body, schema.parsed, schema_id=7))


def test_the_envelopes_hints_name_their_nullable_records() -> None:
    hints = dict(union_branches(CATALOG.schema("task", 3).parsed))
    assert hints == {
        "base_hlc": "dev.keel.events.Hlc",
        "payload": "dev.keel.app.Task",
        "override": "dev.keel.events.Override",
    }


def test_the_plan_of_task_v3_strips_the_event_id_and_converts_due_at() -> None:
    plan = read_plan(json.loads(CATALOG.schema("task", 3).text))
    assert plan.uuid_fields == ("event_id",)
    assert plan.timestamp_paths == (("payload", "due_at"),)


def _body_with_event_id(text: str) -> tuple[bytes, Any]:
    schema = CATALOG.schema("project", 1)
    record = {**_a_project(), "event_id": text}
    # Written without the uuid logical type, so any text can go in (as a partner's producer might).
    loose = json.loads(schema.text)
    loose["fields"][0]["type"] = "string"
    return _plain_body(record, fastavro.parse_schema(loose)), schema


def _a_project() -> dict[str, Any]:
    return {
        "tenant_id": "t",
        "device_id": "d",
        "device_seq": 1,
        "entity_type": "project",
        "entity_id": "p",
        "op": "UPSERT",
        "hlc": {"physical_ms": 1, "logical": 0, "node": "d"},
        "base_hlc": None,
        "schema_version": 1,
        "changed_fields": [],
        "payload": None,
        "override": None,
        "prev_hash": None,
        "hash": None,
        "signature": None,
    }


@pytest.mark.parametrize("text", ["E3E70682-C209-4CAC-A29F-6FBED82C07CD", "{e3e70682-c209-4cac-a29f-6fbed82c07cd}"])
def test_event_ids_are_normalised_like_the_uuid_reader_does(text: str) -> None:
    body, schema = _body_with_event_id(text)
    plan = read_plan(json.loads(schema.text))
    decoded = read_payload_form(body, plan)
    assert decoded["event_id"] == "e3e70682-c209-4cac-a29f-6fbed82c07cd"
    assert decoded == to_payload_form(decode_body(body, schema.parsed))


def test_an_event_id_that_is_no_uuid_fails_with_the_uuid_readers_error() -> None:
    body, schema = _body_with_event_id("not-a-uuid")
    with pytest.raises(DecodeError) as plain:
        decode_body(body, schema.parsed, schema_id=3)
    with pytest.raises(DecodeError) as planned:
        read_payload_form(body, read_plan(json.loads(schema.text)), 3)
    assert str(planned.value) == str(plain.value)


def test_truncated_and_padded_bodies_fail_alike() -> None:
    schema = CATALOG.schema("project", 1)
    body = _plain_body({**_a_project(), "event_id": "e3e70682-c209-4cac-a29f-6fbed82c07cd"}, schema.parsed)
    plan = read_plan(json.loads(schema.text))
    for broken in (body[:-3], body + b"\x00\x01"):
        with pytest.raises(DecodeError) as plain:
            decode_body(broken, schema.parsed)
        with pytest.raises(DecodeError) as planned:
            read_payload_form(broken, plan)
        assert str(planned.value) == str(plain.value)


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "array", "items": {"type": "long", "logicalType": "timestamp-millis"}},
        {"type": "long", "logicalType": "timestamp-micros"},
        {"type": "int", "logicalType": "date"},
        ["null", {"type": "string", "logicalType": "uuid"}],
    ],
    ids=["millis-in-array", "micros", "date", "uuid-in-union"],
)
def test_other_logical_types_are_read_the_generic_way(field_type: Any) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "f", "type": field_type}]}
    assert read_plan(schema).generic


def test_a_named_type_with_a_logical_type_used_twice_is_read_the_generic_way() -> None:
    clock = {
        "type": "record",
        "name": "Clock",
        "fields": [{"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
    }
    schema = {"type": "record", "name": "R", "fields": [{"name": "a", "type": clock}, {"name": "b", "type": "Clock"}]}
    plan = read_plan(schema)
    assert plan.generic
    record = {"a": {"at": 1_700_000_000_000}, "b": {"at": 5}}
    body = _plain_body(record, fastavro.parse_schema(schema))
    assert read_payload_form(body, plan) == record
