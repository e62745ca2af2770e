"""The migration layer: lossless up-then-down casting, Avro-equal resolution, cautions, rollback by configuration."""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.errors import ConfigurationError
from keel.hlc import HlcTimestamp
from keel.settings import get_settings
from schemas.catalog import SCHEMAS_ROOT, Catalog, default_catalog
from schemas.codec import decode_body, encode_body
from schemas.domain_migrations import build_registry, configured_disabled_migrations
from schemas.envelope import ChangeEvent, Op
from schemas.migrations import NOTHING_VISIBLE, MigrationRegistry, downcast_event
from schemas.resolution import field_mapping, resolve_payload
from tests.schemas.strategies import change_events, field_subsets, payloads, to_wire_values

CATALOG = default_catalog()
UPWARD_PAIRS = [
    (entity, old, new)
    for entity in CATALOG.entities()
    for old, new in itertools.combinations(CATALOG.versions(entity), 2)
]
PAIR_IDS = [f"{e}-v{a}-v{b}" for e, a, b in UPWARD_PAIRS]
STATELESS = build_registry(CATALOG, disabled=())  # for property tests; only its counters change


@pytest.fixture
def registry() -> MigrationRegistry:
    return build_registry(CATALOG, disabled=())


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """Settings re-read from the (monkeypatched) environment, and forgotten afterwards."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(("entity", "old", "new"), UPWARD_PAIRS, ids=PAIR_IDS)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_up_then_down_loses_nothing_the_older_version_holds(
    entity: str, old: int, new: int, data: st.DataObject
) -> None:
    registry = STATELESS
    schema = CATALOG.schema(entity, old)
    payload = data.draw(payloads(schema))
    changed = data.draw(field_subsets(schema))
    up = registry.migrate(entity, payload, changed, old, new)
    assert up.version == new
    down = registry.migrate(entity, up.payload, up.changed_fields, new, old)
    assert down.payload == payload
    assert set(changed or schema.field_names) <= set(down.changed_fields)


@pytest.mark.parametrize(("entity", "old", "new"), UPWARD_PAIRS, ids=PAIR_IDS)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_upward_resolution_equals_fastavro_writer_to_reader(
    entity: str, old: int, new: int, data: st.DataObject
) -> None:
    writer, reader = CATALOG.schema(entity, old), CATALOG.schema(entity, new)
    payload = data.draw(payloads(writer))
    by_avro = decode_body(encode_body(payload, writer.parsed_payload), writer.parsed_payload, reader.parsed_payload)
    ours = resolve_payload(payload, (), writer, reader)
    assert ours.payload == to_wire_values(by_avro)
    assert ours.cautions == [], "every older value has a place in a newer version"


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_downcast_names_every_value_the_older_version_cannot_show(data: st.DataObject) -> None:
    registry = STATELESS
    newest = CATALOG.current_version("task")
    target = data.draw(st.sampled_from(CATALOG.versions("task")[:-1]))
    event = data.draw(change_events(CATALOG, "task", newest).filter(lambda e: e.payload is not None))
    down, cautions = downcast_event(event, target, registry)
    assert down.schema_version == target
    assert (down.event_id, down.hlc, down.device_seq, down.op) == (
        event.event_id,
        event.hlc,
        event.device_seq,
        event.op,
    )
    assert event.payload is not None
    assert down.payload is not None
    assert set(down.payload) == set(CATALOG.schema("task", target).field_names)
    cautioned = {caution.split(":", 1)[0] for caution in cautions}
    # Follow every field down version by version: each value that has no place in the target, or an enum
    # symbol the target does not know, must be named.
    current = CATALOG.schema("task", newest)
    mapping = {name: name for name in current.field_names}
    for version in range(newest - 1, target - 1, -1):
        step = field_mapping(CATALOG.schema("task", version + 1), CATALOG.schema("task", version))
        mapping = {name: step[hop] for name, hop in mapping.items() if hop in step}
    target_schema = CATALOG.schema("task", target)
    for spec in current.fields:
        value = event.payload[spec.name]
        if spec.name not in mapping:
            if not (spec.has_default and value == spec.default):
                assert spec.name in cautioned, f"{spec.name}={value!r} dropped silently"
            continue
        symbols = target_schema.field(mapping[spec.name]).enum_symbols
        if symbols is not None and value not in symbols:
            assert mapping[spec.name] in cautioned


def test_an_old_client_gets_a_v3_change_down_cast_with_cautions(registry: MigrationRegistry) -> None:
    event = ChangeEvent(
        event_id="6f1c4f5e-8a53-4b51-9a5f-0c1f7d4b2a10",
        tenant_id="acme",
        device_id="phone-1",
        device_seq=7,
        entity_type="task",
        entity_id="task-1",
        op=Op.UPSERT,
        hlc=HlcTimestamp(1_750_000_000_000, 0, "phone-1"),
        schema_version=3,
        payload={
            "title": "Ship it",
            "description": "all of it",
            "due": "2025-07-01",
            "due_at": 1_751_328_000_000,
            "status": "DOING",
            "project_id": None,
            "priority": 2,
            "labels": ["release"],
        },
        changed_fields=("title", "description", "status", "priority", "labels"),
    )
    v1, cautions = downcast_event(event, 1, registry)
    assert v1.payload == {
        "title": "Ship it",
        "notes": "all of it",
        "due": "2025-07-01",
        "status": "TODO",
        "project_id": None,
    }
    assert v1.changed_fields == ("title", "notes", "status")
    assert "status: DOING is not in v1, shown as TODO" in cautions
    assert "labels: not in v2, value not shown" in cautions
    assert "priority: not in v1, value not shown" in cautions
    assert all(not caution.startswith(NOTHING_VISIBLE) for caution in cautions)
    v2, v2_cautions = downcast_event(event, 2, registry)
    assert v2.payload is not None
    assert (v2.payload["status"], v2.payload["priority"]) == ("DOING", 2)
    assert v2_cautions == ["due_at: not in v2, value not shown", "labels: not in v2, value not shown"]
    same, none = downcast_event(event, 3, registry)
    assert (same, none) == (event, [])


def test_a_change_an_old_version_cannot_see_at_all_says_so(registry: MigrationRegistry) -> None:
    event = ChangeEvent(
        event_id="0b8e0a5e-2a53-4b51-9a5f-0c1f7d4b2a10",
        tenant_id="acme",
        device_id="phone-2",
        device_seq=1,
        entity_type="task",
        entity_id="task-2",
        op=Op.UPSERT,
        hlc=HlcTimestamp(1, 0, "phone-2"),
        schema_version=3,
        payload={**_defaults(3), "labels": ["x"]},
        changed_fields=("labels",),
    )
    down, cautions = downcast_event(event, 1, registry)
    assert down.changed_fields == ()
    assert cautions[-1].startswith(f"{NOTHING_VISIBLE}: nothing this change writes exists in task v1")
    tombstone = ChangeEvent(**{**_event_fields(event), "op": Op.DELETE, "payload": None, "changed_fields": ()})
    gone, tombstone_cautions = downcast_event(tombstone, 1, registry)
    assert (gone.schema_version, gone.payload, tombstone_cautions) == (1, None, [])


def _defaults(version: int) -> dict[str, Any]:
    return {spec.name: spec.default for spec in CATALOG.schema("task", version).fields}


def _event_fields(event: ChangeEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in ChangeEvent.__dataclass_fields__}


def test_counters_name_every_step_and_version_move(registry: MigrationRegistry) -> None:
    payload = {"title": "t", "notes": "", "due": "2025-07-01", "status": "TODO", "project_id": None}
    for _ in range(3):
        registry.migrate("task", payload, (), 1)
    assert registry.performed == {"upcast_task_v2_v3": 3, "normalize_task": 3}
    assert registry.transitions == {"task v1→v3": 3}
    assert registry.versions_in_use() == {"comment": 1, "project": 1, "task": 3}


@pytest.fixture
def debug_logs() -> Iterator[list[dict[str, Any]]]:
    previous = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**previous)


def test_logs_name_versions_in_use_and_each_migration(debug_logs: list[dict[str, Any]]) -> None:
    registry = build_registry(CATALOG, disabled=("normalize_task",))
    registry.migrate("task", {"title": "t", "notes": "n", "due": None, "status": "DONE", "project_id": None}, (), 1)
    configured = next(entry for entry in debug_logs if entry["event"] == "migrations configured")
    assert configured["versions"] == {"comment": 1, "project": 1, "task": 3}
    assert configured["disabled"] == ["normalize_task"]
    migrated = next(entry for entry in debug_logs if entry["event"] == "migrated")
    assert (migrated["entity"], migrated["from_version"], migrated["to_version"]) == ("task", 1, 3)
    assert migrated["steps"] == ["upcast_task_v2_v3"]
    assert any(entry["event"] == "migration step disabled, skipped" for entry in debug_logs)


def test_disabling_a_step_by_environment_is_the_rollback_path(
    monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    monkeypatch.setenv("KEEL_DISABLED_MIGRATIONS", "normalize_task, upcast_task_v2_v3")
    registry = build_registry(CATALOG)
    assert registry.disabled == {"normalize_task", "upcast_task_v2_v3"}
    v3 = {**_defaults(3), "due_at": 1_751_328_000_000}
    result = registry.migrate("task", v3, ("due_at",), 3)
    assert result.applied == []
    assert result.payload is not None
    assert result.payload["due"] is None, "the disabled normaliser no longer fills the legacy field"
    assert registry.skipped == {"normalize_task": 1}
    assert "normalize_task" not in registry.performed
    enabled = build_registry(CATALOG, disabled=())
    again = enabled.migrate("task", v3, ("due_at",), 3)
    assert again.payload is not None
    assert again.payload["due"] == "2025-07-01"


def test_disabling_a_step_in_subjects_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    monkeypatch.delenv("KEEL_DISABLED_MIGRATIONS", raising=False)
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_ROOT / "avro", root / "avro")
    toml = (SCHEMAS_ROOT / "subjects.toml").read_text().replace("disabled = []", 'disabled = ["normalize_task"]')
    (root / "subjects.toml").write_text(toml)
    catalog = Catalog.load(root)
    assert configured_disabled_migrations(catalog) == ("normalize_task",)
    assert build_registry(catalog).disabled == {"normalize_task"}
    (root / "subjects.toml").write_text(toml.replace('"normalize_task"', '"upcast_task_v9_v10"'))
    with pytest.raises(ConfigurationError, match="no migration step named 'upcast_task_v9_v10'"):
        build_registry(Catalog.load(root))
    (root / "subjects.toml").write_text(toml.replace('disabled = ["normalize_task"]', "disabled = 3"))
    with pytest.raises(ConfigurationError, match="must be a list of step names"):
        configured_disabled_migrations(Catalog.load(root))
