"""`EntityState` ⇄ JSON, for the `state jsonb` column (and snapshots): field stamps, tombstone, write history.

Compact keys keep hot rows small: `f` fields {name: [value, stamp]}, `d` tombstone stamp, `h` history.
A compacted tombstone is `{"f": {}, "d": stamp, "h": []}`: the clock floor alone, enough to keep any
older late write from resurrecting the entity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keel.hlc import HlcTimestamp
from projections.conflict_rules import EntityState, FieldState, WriteRecord, WriteStamp
from schemas.envelope import Op

__all__ = ["compact_tombstone", "state_from_json", "state_to_json"]

_OPS = {op.value: op for op in Op}  # `Op(text)` searches the members; every state read decodes each record's op


def _hlc_to_json(hlc: HlcTimestamp | None) -> list[Any] | None:
    return None if hlc is None else [hlc.physical_ms, hlc.logical, hlc.node]


def _hlc_from_json(raw: list[Any] | None) -> HlcTimestamp | None:
    return None if raw is None else HlcTimestamp(int(raw[0]), int(raw[1]), str(raw[2]))


def _record_to_json(record: WriteRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "e": record.event_id,
        "dv": record.device_id,
        "op": record.op.value,
        "t": _hlc_to_json(record.hlc),
        "b": _hlc_to_json(record.base_hlc),
        "s": record.stamp.as_list(),
        "v": dict(record.values),
    }
    if record.supersedes:
        body["sup"] = list(record.supersedes)
    if record.actor:
        body["a"] = record.actor
    if record.reason:
        body["r"] = record.reason
    return body


def _record_from_json(raw: Mapping[str, Any]) -> WriteRecord:
    hlc = _hlc_from_json(raw["t"])
    if hlc is None:
        raise ValueError("a write record always has a clock")
    return WriteRecord(
        event_id=str(raw["e"]),
        device_id=str(raw["dv"]),
        op=_OPS.get(raw["op"]) or Op(raw["op"]),  # Op(...) raises the ValueError for an unknown op
        hlc=hlc,
        base_hlc=_hlc_from_json(raw.get("b")),
        stamp=WriteStamp.from_list(raw["s"]),
        values=dict(raw.get("v") or {}),
        supersedes=tuple(raw.get("sup") or ()),
        actor=str(raw.get("a", "")),
        reason=str(raw.get("r", "")),
    )


def state_to_json(state: EntityState) -> dict[str, Any]:
    """The JSON form of a state (identity columns are stored beside it, not inside)."""
    return {
        "f": {name: [field.value, field.stamp.as_list()] for name, field in sorted(state.fields.items())},
        "d": state.deleted.as_list() if state.deleted is not None else None,
        "h": [_record_to_json(record) for record in state.history],
    }


def state_from_json(tenant_id: str, entity_type: str, entity_id: str, raw: Mapping[str, Any]) -> EntityState:
    """Inverse of `state_to_json`."""
    fields = {name: FieldState(value, WriteStamp.from_list(stamp)) for name, (value, stamp) in raw["f"].items()}
    deleted = WriteStamp.from_list(raw["d"]) if raw.get("d") is not None else None
    history = tuple(_record_from_json(record) for record in raw.get("h") or ())
    return EntityState(tenant_id, entity_type, entity_id, fields, deleted, history)


def compact_tombstone(state: EntityState) -> EntityState:
    """A deleted entity reduced to its tombstone clock (history and pre-delete field stamps dropped).

    Visibility is unchanged: a deleted entity has no field newer than its tombstone, and any later write
    still compares against the kept tombstone stamp, so an older late write stays hidden.
    """
    if state.is_alive or state.deleted is None:
        raise ValueError("only a deleted entity can be compacted to its tombstone")
    return EntityState(state.tenant_id, state.entity_type, state.entity_id, {}, state.deleted, ())
