"""Resolution between two versions follows each pair of schemas, whichever catalog they come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.catalog import EntitySchema
from schemas.resolution import resolve_payload


def schema(version: int, fields: list[dict[str, Any]]) -> EntitySchema:
    payload = {"type": "record", "name": "Note", "fields": fields}
    return EntitySchema("note", version, payload, {}, Path("note.avsc"))


def test_two_catalogs_with_different_renames_each_get_their_own_mapping() -> None:
    old = schema(1, [{"name": "text", "type": "string", "default": ""}])
    renamed = schema(2, [{"name": "body", "type": "string", "default": "", "aliases": ["text"]}])
    not_renamed = schema(2, [{"name": "body", "type": "string", "default": ""}])
    payload = {"text": "hello"}
    assert resolve_payload(payload, ("text",), old, renamed).payload == {"body": "hello"}
    assert resolve_payload(payload, ("text",), old, not_renamed).payload == {"body": ""}
    assert resolve_payload(payload, ("text",), old, renamed).changed_fields == ("body",)


def test_values_are_copies_the_caller_may_change() -> None:
    old = schema(1, [{"name": "tags", "type": {"type": "array", "items": "string"}, "default": []}])
    new = schema(2, [{"name": "tags", "type": {"type": "array", "items": "string"}, "default": []}])
    payload = {"tags": ["a"]}
    resolved = resolve_payload(payload, ("tags",), old, new).payload
    assert resolved is not None
    resolved["tags"].append("b")
    assert payload == {"tags": ["a"]}
    defaulted = resolve_payload({}, (), old, new).payload
    assert defaulted is not None
    defaulted["tags"].append("x")
    assert new.fields[0].default == []
