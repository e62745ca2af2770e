"""Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary) and Avro (de)serialisation.

Every failure to read bytes becomes a `DecodeError` (permanent: the record goes to the DLQ), never a
crash or an unbounded allocation: lengths are checked against the bytes actually present.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.validation import validate

from keel.errors import DecodeError, ValidationError

__all__ = [
    "MAGIC_BYTE",
    "ReadPlan",
    "decode_body",
    "encode_body",
    "frame",
    "read_payload_form",
    "read_plan",
    "to_payload_form",
    "unframe",
    "union_branches",
    "validate_record",
    "with_branches",
]

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")
MAX_RECORD_BYTES = 8 * 1024 * 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header."""
    return _HEADER.pack(MAGIC_BYTE, schema_id) + body


def unframe(data: bytes | None) -> tuple[int, memoryview]:
    """Split a Confluent-framed value into (schema id, Avro body); DecodeError if it is not one."""
    if data is None:
        raise DecodeError("record has no value (null): change events are never null")
    if len(data) < _HEADER.size:
        raise DecodeError(f"value of {len(data)} bytes is shorter than the 5-byte Confluent header")
    if len(data) > MAX_RECORD_BYTES:
        raise DecodeError(f"value of {len(data)} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise DecodeError(f"bad magic byte {magic:#04x} (expected 0x00): not Confluent wire format")
    return schema_id, memoryview(data)[_HEADER.size :]


def encode_body(record: dict[str, Any], parsed_schema: Any) -> bytes:
    """Avro binary of `record`; ValidationError naming the field if it does not fit the schema."""
    buffer = io.BytesIO()
    try:
        fastavro.schemaless_writer(buffer, parsed_schema, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
        raise ValidationError(f"record does not fit schema {parsed_schema.get('name', '?')}: {error}") from error
    return buffer.getvalue()


def decode_body(
    body: bytes | memoryview, writer_schema: Any, reader_schema: Any | None = None, schema_id: int | None = None
) -> dict[str, Any]:
    """Read an Avro body written with `writer_schema`, resolved into `reader_schema` when given."""
    stream = io.BytesIO(body)
    record = _read(stream, writer_schema, reader_schema, schema_id)
    _raise_if_trailing(stream, schema_id)
    if not isinstance(record, dict):
        raise DecodeError("Avro body is not a record", schema_id)
    return record


def _read(stream: io.BytesIO, writer_schema: Any, reader_schema: Any | None, schema_id: int | None) -> Any:
    try:
        return fastavro.schemaless_reader(stream, writer_schema, reader_schema)
    except UnicodeDecodeError as error:
        raise DecodeError(f"invalid UTF-8 in a string field: {error.reason}", schema_id) from error
    except (EOFError, StopIteration, struct.error) as error:
        raise DecodeError("truncated Avro body: ended before the record was complete", schema_id) from error
    except (ValueError, IndexError, TypeError, KeyError, OverflowError, MemoryError) as error:
        raise DecodeError(f"undecodable Avro body: {type(error).__name__}: {error}", schema_id) from error
    except Exception as error:  # fastavro raises its own schema-resolution errors for incompatible pairs
        raise DecodeError(f"cannot resolve writer schema into reader schema: {error}", schema_id) from error


def _raise_if_trailing(stream: io.BytesIO, schema_id: int | None) -> None:
    remaining = len(stream.getbuffer()) - stream.tell()
    if remaining:
        raise DecodeError(f"{remaining} trailing bytes after the Avro record", schema_id)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """How to read one writer schema's bodies straight into payload form (see `read_plan`)."""

    parsed: Any  # the writer schema as fastavro reads it (uuid logical types of top-level fields removed)
    uuid_fields: tuple[str, ...] = ()  # top-level uuid strings, read as text and normalised like uuid.UUID
    timestamp_paths: tuple[tuple[str, ...], ...] = ()  # record paths of timestamp-millis values
    generic: bool = False  # other logical types (or ones inside arrays and maps): `to_payload_form` after reading


def read_plan(schema: Any) -> ReadPlan:
    """A plan for reading bodies of the writer schema `schema` (JSON form) into payload form.

    `to_payload_form` walks every value of every record; the plan visits only the places the schema says
    can hold a datetime or a UUID. For the catalog's envelopes that is the event id (kept as text and
    normalised exactly as `str(uuid.UUID(...))` would) and timestamp-millis payload fields (still decoded
    by fastavro, so an out-of-range value fails as before, then turned into epoch milliseconds). A schema
    with any other logical type, or one inside an array, map or a named type used twice, is read the
    generic way, so the result is always what `to_payload_form(decode_body(...))` returns.
    """
    if not isinstance(schema, dict):
        return ReadPlan(fastavro.parse_schema(schema), generic=True)
    walker = _LogicalTypes()
    walker.visit(schema, (), deep=False)
    logical = walker.found
    fields = schema.get("fields", []) if schema.get("type") == "record" else []
    uuid_fields = tuple(
        spec["name"]
        for spec in fields
        if isinstance(spec.get("type"), dict)
        and spec["type"] == {**spec["type"], "type": "string", "logicalType": "uuid"}
    )
    timestamps = tuple(path for path, kind, deep in logical if kind == "timestamp-millis" and not deep)
    if len(uuid_fields) + len(timestamps) != len(logical) or schema.get("type") != "record":
        return ReadPlan(fastavro.parse_schema(schema), generic=True)
    stripped = dict(schema)
    stripped["fields"] = [
        {**spec, "type": "string"} if spec["name"] in uuid_fields else spec for spec in schema["fields"]
    ]
    return ReadPlan(fastavro.parse_schema(stripped), uuid_fields, timestamps)


class _LogicalTypes:
    """Where a schema (JSON form) holds logical types: (record path, logical type, inside an array or map)."""

    def __init__(self) -> None:
        self.found: list[tuple[tuple[str, ...], str, bool]] = []
        self._named: dict[str, bool] = {}  # named types defined so far → whether they hold a logical type

    def visit(self, node: Any, path: tuple[str, ...], *, deep: bool) -> bool:
        """Record the logical types of `node` at `path`; whether it holds any."""
        if isinstance(node, str):
            return self._reference(node, path)
        if isinstance(node, list):
            return any([self.visit(branch, path, deep=deep) for branch in node])  # noqa: C419 - visit every branch
        if not isinstance(node, dict):
            return False
        if "logicalType" in node:
            self.found.append((path, str(node["logicalType"]), deep))
            return True
        kind = node.get("type")
        holds = False
        if kind == "record":
            fields = node.get("fields", ())
            holds = any([self.visit(f.get("type"), (*path, f["name"]), deep=deep) for f in fields])  # noqa: C419
        elif kind in ("array", "map"):
            holds = self.visit(node.get("items" if kind == "array" else "values"), path, deep=True)
        elif kind not in ("enum", "fixed"):
            return self.visit(kind, path, deep=deep)
        if kind in ("record", "enum", "fixed"):
            self._define(node, holds)
        return holds

    def _reference(self, name: str, path: tuple[str, ...]) -> bool:
        if name in _PRIMITIVES or not (self._named.get(name) or self._named.get(name.rsplit(".", 1)[-1])):
            return False
        self.found.append((path, "reused-named-type", True))  # its own paths were recorded where it was defined
        return True

    def _define(self, node: dict[str, Any], holds: bool) -> None:
        name, namespace = str(node.get("name", "")), node.get("namespace")
        self._named[name] = holds
        if namespace and "." not in name:
            self._named[f"{namespace}.{name}"] = holds


def read_payload_form(body: bytes | memoryview, plan: ReadPlan, schema_id: int | None = None) -> dict[str, Any]:
    """`to_payload_form(decode_body(body, writer))` for the writer schema of `plan`, with less work."""
    stream = io.BytesIO(body)
    record = _read(stream, plan.parsed, None, schema_id)
    if plan.generic:
        _raise_if_trailing(stream, schema_id)
        if not isinstance(record, dict):
            raise DecodeError("Avro body is not a record", schema_id)
        payload_form: dict[str, Any] = to_payload_form(record)
        return payload_form
    for name in plan.uuid_fields:
        record[name] = _uuid_text(record[name], schema_id)  # fastavro would have failed while reading
    _raise_if_trailing(stream, schema_id)
    for path in plan.timestamp_paths:
        _millis_at(record, path)
    read: dict[str, Any] = record  # a record schema always reads as a dict
    return read


def _uuid_text(value: str, schema_id: int | None) -> str:
    """`str(uuid.UUID(value))`, and the DecodeError fastavro's uuid reader would have caused."""
    if _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError as error:
        raise DecodeError(f"undecodable Avro body: ValueError: {error}", schema_id) from error


def _millis_at(record: dict[str, Any], path: tuple[str, ...]) -> None:
    """Turn the datetime at `path` (when present) into epoch milliseconds, in place."""
    holder: Any = record
    for key in path[:-1]:
        holder = holder.get(key) if isinstance(holder, dict) else None
        if holder is None:
            return
    if isinstance(holder, dict):
        value = holder.get(path[-1])
        if isinstance(value, dt.datetime):
            holder[path[-1]] = to_payload_form(value)


def union_branches(parsed_schema: Any) -> tuple[tuple[str, str], ...]:
    """(field, type name) of the top-level fields typed `["null", <named type>]` of a parsed record schema.

    Handing fastavro such a value as `(type name, value)` names the union branch, which spares it the search
    for a matching branch — for a record branch that search validates the whole value first. The bytes are
    the same: the non-null branch is the only one a non-null value can take.
    """
    hints = []
    for spec in parsed_schema.get("fields", ()):
        kind = spec.get("type")
        if not isinstance(kind, list) or len(kind) != 2 or "null" not in kind:
            continue
        other = kind[1] if kind[0] == "null" else kind[0]
        name = other.get("name") if isinstance(other, dict) else other
        if isinstance(name, str) and name not in _PRIMITIVES:
            hints.append((spec["name"], name))
    return tuple(hints)


def with_branches(record: dict[str, Any], branches: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """`record` (modified in place) with the non-null values of `branches`' fields as `(type name, value)`."""
    for name, branch in branches:
        value = record.get(name)
        if value is not None:
            record[name] = (branch, value)
    return record


def validate_record(record: dict[str, Any], parsed_schema: Any, *, what: str = "record") -> None:
    """Raise ValidationError (with the failing field path) unless `record` fits `parsed_schema`."""
    try:
        validate(record, parsed_schema, raise_errors=True)
    except fastavro.validation.ValidationError as error:
        details = "; ".join(str(e) for e in error.errors) if getattr(error, "errors", None) else str(error)
        raise ValidationError(f"{what} fails validation: {details}") from error


def to_payload_form(value: Any) -> Any:
    """Decoder output in payload form: timestamps as epoch milliseconds, UUIDs as text, containers copied."""
    if isinstance(value, dict):
        return {key: to_payload_form(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_payload_form(item) for item in value]
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return (moment - _EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value
