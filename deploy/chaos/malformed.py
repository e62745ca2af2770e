"""Malformed change-topic records, each built from a valid one, and the dead-letter reason each must get.

R4 mixes these into live topics. Each kind damages a record the way real producers and disks do:

| kind | what | the projector's reason (`keel-dlq-error-class`) |
|---|---|---|
| `bad-magic` | first byte 0x01 instead of Confluent's 0x00 | DecodeError |
| `unknown-schema` | a schema id the registry never issued | UnknownSchemaError |
| `truncated` | the Avro body cut short | DecodeError |
| `huge-length` | the first string's length prefix says 2^40 bytes | DecodeError |
| `invalid-utf8` | two bytes of a string replaced by 0xFF 0xFE | DecodeError |
| `null-value` | a record without a value | DecodeError |
| `replayed-seq` | a valid event reusing an applied (device, seq) with other content | SequenceError |
| `oversized` | a valid Avro event whose title is over the 500-character limit | ValidationError |

The first six are byte-level damage of a valid value; the last two are valid Avro that breaks the
contract, so they are built as events (`replayed_event`, `oversized_event`).
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from schemas.codec import frame
from schemas.envelope import ChangeEvent, Op

__all__ = [
    "BYTE_KINDS",
    "EXPECTED_REASON",
    "KINDS",
    "damage",
    "marker_title",
    "oversized_event",
    "replayed_event",
    "zigzag_varint",
]

BYTE_KINDS = ("bad-magic", "unknown-schema", "truncated", "huge-length", "invalid-utf8", "null-value")
KINDS = (*BYTE_KINDS, "replayed-seq", "oversized")
EXPECTED_REASON = {
    "bad-magic": "DecodeError",
    "unknown-schema": "UnknownSchemaError",
    "truncated": "DecodeError",
    "huge-length": "DecodeError",
    "invalid-utf8": "DecodeError",
    "null-value": "DecodeError",
    "replayed-seq": "SequenceError",
    "oversized": "ValidationError",
}
_MARKER = "utf8-marker"
UNKNOWN_SCHEMA_ID = 2_000_000_000  # far above any id a registry hands out


def zigzag_varint(value: int) -> bytes:
    """Avro's encoding of a long: zig-zag, then base-128 varint."""
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while encoded > 0x7F:
        out.append((encoded & 0x7F) | 0x80)
        encoded >>= 7
    out.append(encoded)
    return bytes(out)


def marker_title(n: int) -> str:
    """A title holding an ASCII marker that `invalid-utf8` damage can find in the encoded bytes."""
    return f"{_MARKER}-{n}"


def damage(kind: str, valid: bytes) -> bytes | None:
    """The value of a byte-level malformed record of `kind`, made from a valid framed value.

    `invalid-utf8` needs a value whose payload holds `marker_title(...)`; ValueError for an unknown kind.
    """
    body = valid[5:]
    if kind == "bad-magic":
        return b"\x01" + valid[1:]
    if kind == "unknown-schema":
        return frame(UNKNOWN_SCHEMA_ID, body)
    if kind == "truncated":
        return valid[: max(6, len(valid) * 2 // 3)]
    if kind == "huge-length":
        # The envelope's first field is the event id, a string: its length prefix, then its bytes.
        length = body[0]
        if length & 0x80:
            raise ValueError("the event id's length prefix is expected to fit one byte")
        event_id_bytes = length >> 1
        return valid[:5] + zigzag_varint(1 << 40) + body[1 + event_id_bytes :]
    if kind == "invalid-utf8":
        at = valid.find(_MARKER.encode())
        if at < 0:
            raise ValueError("the value holds no marker title to damage")
        return valid[:at] + b"\xff\xfe" + valid[at + 2 :]
    if kind == "null-value":
        return None
    raise ValueError(f"unknown byte-level kind {kind!r}; known: {', '.join(BYTE_KINDS)}")


def replayed_event(applied: ChangeEvent, n: int) -> ChangeEvent:
    """An event reusing `applied`'s (device, seq) with another event id and other content."""
    payload = {"title": f"replayed content {n}"}
    return replace(
        applied,
        event_id=str(uuid.UUID(int=uuid.UUID(applied.event_id).int ^ (n + 1), version=4)),
        op=Op.UPSERT,
        payload=payload,
        changed_fields=tuple(payload),
        schema_version=3,
        entity_type="task",
    )


def oversized_event(template: ChangeEvent, seq: int, n: int) -> ChangeEvent:
    """A task event of `template`'s device whose title breaks the 500-character limit."""
    payload = {"title": "x" * 600 + str(n)}
    return replace(
        template,
        event_id=str(uuid.UUID(int=uuid.UUID(template.event_id).int ^ (0xABC0 + n), version=4)),
        device_seq=seq,
        op=Op.UPSERT,
        payload=payload,
        changed_fields=tuple(payload),
        schema_version=3,
        entity_type="task",
    )
