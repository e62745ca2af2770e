"""Entity tables derived from the catalog: SQL types, payload ⇄ row conversions, unstorable values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.errors import ValidationError
from projections.entity_tables import MAX_MS, MIN_MS, entity_tables, raise_if_unprojectable


def test_task_columns_follow_the_current_schema() -> None:
    task = entity_tables()["task"]
    assert task.version == 3
    assert {c.name: c.sql_type for c in task.columns} == {
        "title": "text",
        "description": "text",
        "due": "text",
        "due_at": "timestamptz",
        "status": "text",
        "project_id": "text",
        "priority": "integer",
        "labels": "text[]",
    }
    assert task.defaults()["labels"] == []
    assert task.row_values(None) == [None] * len(task.columns)


@given(st.integers(MIN_MS, MAX_MS))
def test_timestamps_round_trip_to_the_millisecond(millis: int) -> None:
    due_at = next(c for c in entity_tables()["task"].columns if c.name == "due_at")
    stored = due_at.to_db(millis)
    assert isinstance(stored, datetime)
    assert stored.tzinfo is UTC
    assert due_at.from_db(stored) == millis


def test_values_postgresql_cannot_store_are_validation_errors() -> None:
    task = entity_tables()["task"]
    ids = {"tenant_id": "t", "entity_id": "e", "device_id": "d"}
    raise_if_unprojectable(task, {"title": "fine", "labels": ["a"]}, ids)
    with pytest.raises(ValidationError, match="NUL"):
        raise_if_unprojectable(task, {"title": "bad\x00title"}, ids)
    with pytest.raises(ValidationError, match=r"labels\[1\] contains a NUL"):
        raise_if_unprojectable(task, {"labels": ["ok", "\x00"]}, ids)
    with pytest.raises(ValidationError, match=r"years 1\.\.9999"):
        raise_if_unprojectable(task, {"due_at": MAX_MS + 1}, ids)
    with pytest.raises(ValidationError, match="entity_id contains a NUL"):
        raise_if_unprojectable(task, None, {**ids, "entity_id": "e\x00"})
