"""Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary) and Avro (de)serialisation.

Every failure to read bytes becomes a `DecodeError` (permanent: the record goes to the DLQ), never a
crash or an unbounded allocation: lengths are checked against the bytes actually present.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import uuid
from typing import Any

import fastavro
from fastavro.validation import validate

from keel.errors import DecodeError, ValidationError

__all__ = ["MAGIC_BYTE", "decode_body", "encode_body", "frame", "to_payload_form", "unframe", "validate_record"]

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")
MAX_RECORD_BYTES = 8 * 1024 * 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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
    try:
        record = fastavro.schemaless_reader(stream, writer_schema, reader_schema)
    except UnicodeDecodeError as error:
        raise DecodeError(f"invalid UTF-8 in a string field: {error.reason}", schema_id) from error
    except (EOFError, StopIteration, struct.error) as error:
        raise DecodeError("truncated Avro body: ended before the record was complete", schema_id) from error
    except (ValueError, IndexError, TypeError, KeyError, OverflowError, MemoryError) as error:
        raise DecodeError(f"undecodable Avro body: {type(error).__name__}: {error}", schema_id) from error
    except Exception as error:  # fastavro raises its own schema-resolution errors for incompatible pairs
        raise DecodeError(f"cannot resolve writer schema into reader schema: {error}", schema_id) from error
    remaining = len(stream.getbuffer()) - stream.tell()
    if remaining:
        raise DecodeError(f"{remaining} trailing bytes after the Avro record", schema_id)
    if not isinstance(record, dict):
        raise DecodeError("Avro body is not a record", schema_id)
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
