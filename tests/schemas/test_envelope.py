"""The change event's own helpers."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from keel.hlc import HlcTimestamp
from schemas.envelope import ChangeEvent, Op, Override


def test_a_migrated_copy_keeps_every_other_field() -> None:
    event = ChangeEvent(
        event_id="e3e70682-c209-4cac-a29f-6fbed82c07cd",
        tenant_id="acme",
        device_id="d-1",
        device_seq=7,
        entity_type="task",
        entity_id="t-1",
        op=Op.OVERRIDE,
        hlc=HlcTimestamp(5, 1, "d-1"),
        schema_version=2,
        payload={"title": "a"},
        changed_fields=("title",),
        base_hlc=HlcTimestamp(4, 0, "d-2"),
        override=Override("why", "ops", "dec-1", ("e-1",)),
        prev_hash=b"p" * 32,
        hash=b"h" * 32,
        signature=b"s" * 64,
    )
    assert all(getattr(event, spec.name) not in (None, (), "") for spec in fields(ChangeEvent))
    moved = event.with_payload({"title": "a", "due_at": None}, ("title", "due_at"), 3)
    assert moved == replace(
        event, payload={"title": "a", "due_at": None}, changed_fields=("title", "due_at"), schema_version=3
    )


def test_an_unknown_op_is_refused_when_read_back() -> None:
    record = ChangeEvent("e", "t", "d", 1, "task", "x", Op.DELETE, HlcTimestamp(1, 0, "d"), 1).to_avro()
    assert ChangeEvent.from_avro(record).op is Op.DELETE
    with pytest.raises(ValueError, match="RENAME"):
        ChangeEvent.from_avro({**record, "op": "RENAME"})
