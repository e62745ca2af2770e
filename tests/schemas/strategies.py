"""Hypothesis strategies that draw values of any Avro type, and change events of any catalog version."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from keel.hlc import HlcTimestamp
from schemas.catalog import Catalog, EntitySchema
from schemas.envelope import ChangeEvent, Op, Override

INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
# timestamp-millis values fastavro turns into datetimes and back without loss (year 1..9999 boundaries).
MILLIS_RANGE = (-62_135_596_800_000 + 86_400_000, 253_402_300_799_000 - 86_400_000)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

texts = st.text(max_size=12)


def _named_types(node: Any, names: dict[str, dict[str, Any]]) -> None:
    if isinstance(node, list):
        for branch in node:
            _named_types(branch, names)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed"):
            names[node["name"]] = node
        for spec in node.get("fields", []):
            _named_types(spec["type"], names)
        for key in ("items", "values"):
            if key in node:
                _named_types(node[key], names)


def avro_values(avro_type: Any, names: dict[str, dict[str, Any]] | None = None) -> st.SearchStrategy[Any]:
    """Values valid for `avro_type` (a schema document), named references resolved through `names`."""
    if names is None:
        names = {}
        _named_types(avro_type, names)
    if isinstance(avro_type, list):
        return st.one_of([avro_values(branch, names) for branch in avro_type])
    if isinstance(avro_type, str):
        primitives: dict[str, st.SearchStrategy[Any]] = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(*INT_RANGE),
            "long": st.integers(*LONG_RANGE),
            "float": st.floats(width=32, allow_nan=False),
            "double": st.floats(allow_nan=False),
            "bytes": st.binary(max_size=16),
            "string": texts,
        }
        if avro_type in primitives:
            return primitives[avro_type]
        return avro_values(names[avro_type], names)
    kind = avro_type["type"]
    logical = avro_type.get("logicalType")
    if logical == "timestamp-millis":
        return st.integers(*MILLIS_RANGE)
    if logical == "uuid":
        return st.uuids().map(str)
    if kind == "enum":
        return st.sampled_from(avro_type["symbols"])
    if kind == "array":
        return st.lists(avro_values(avro_type["items"], names), max_size=4)
    if kind == "map":
        return st.dictionaries(texts, avro_values(avro_type["values"], names), max_size=4)
    if kind == "record":
        return st.fixed_dictionaries({spec["name"]: avro_values(spec["type"], names) for spec in avro_type["fields"]})
    return avro_values(kind, names)


def payloads(schema: EntitySchema) -> st.SearchStrategy[dict[str, Any]]:
    """Payloads of one entity version."""
    strategy: st.SearchStrategy[dict[str, Any]] = avro_values(schema.payload)
    return strategy


def field_subsets(schema: EntitySchema) -> st.SearchStrategy[tuple[str, ...]]:
    """`changed_fields` of a version: empty (every field) or some of its fields, in declaration order."""
    return st.sets(st.sampled_from(schema.field_names)).map(
        lambda chosen: tuple(name for name in schema.field_names if name in chosen)
    )


hlcs = st.builds(HlcTimestamp, st.integers(0, 2**50), st.integers(0, 2**31 - 1), st.text(min_size=1, max_size=8))
ids = st.text(min_size=1, max_size=20)


@st.composite
def change_events(draw: st.DrawFn, catalog: Catalog, entity: str, version: int) -> ChangeEvent:
    """Any valid change event of one entity version."""
    schema = catalog.schema(entity, version)
    op = draw(st.sampled_from(Op))
    payload = None if op is Op.DELETE else draw(payloads(schema))
    override = (
        draw(
            st.builds(
                Override,
                reason=texts,
                actor=texts,
                decision_id=st.none() | texts,
                supersedes=st.lists(st.uuids().map(str), max_size=3).map(tuple),
            )
        )
        if op is Op.OVERRIDE
        else None
    )
    return ChangeEvent(
        event_id=str(draw(st.uuids())),
        tenant_id=draw(ids),
        device_id=draw(ids),
        device_seq=draw(st.integers(1, 2**63 - 1)),
        entity_type=entity,
        entity_id=draw(ids),
        op=op,
        hlc=draw(hlcs),
        schema_version=version,
        payload=payload,
        changed_fields=() if payload is None else draw(field_subsets(schema)),
        base_hlc=draw(st.none() | hlcs),
        override=override,
        prev_hash=draw(st.none() | st.binary(min_size=32, max_size=32)),
        hash=draw(st.none() | st.binary(min_size=32, max_size=32)),
        signature=draw(st.none() | st.binary(min_size=64, max_size=64)),
    )


def to_wire_values(value: Any) -> Any:
    """Logical-type objects fastavro decodes (datetime, UUID) back to the plain values written."""
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {key: to_wire_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_wire_values(item) for item in value]
    return value


def every_version(catalog: Catalog) -> list[tuple[str, int]]:
    """(entity, version) for every version in the catalog."""
    return [(entity, version) for entity in catalog.entities() for version in catalog.versions(entity)]
