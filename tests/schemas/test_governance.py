"""The submission path on the in-memory registry: check, register oldest first, levels, refusals, history."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from schemas.catalog import SCHEMAS_ROOT, Catalog, default_catalog
from schemas.governance import check_subjects, register_subjects, subject_name
from schemas.registry import InMemorySchemaRegistry

PREFIX = "acme"


class RecordingRegistry(InMemorySchemaRegistry):
    """The fake, noting the order of registrations and level changes."""

    def __init__(self) -> None:
        super().__init__(global_level="BACKWARD")
        self.calls: list[str] = []

    async def register(self, subject: str, schema: str) -> int:
        self.calls.append(f"register {subject} v{len(await self.versions(subject)) + 1}")
        return await super().register(subject, schema)

    async def set_compatibility(self, level: str, subject: str | None = None) -> None:
        self.calls.append(f"level {subject} {level}")
        await super().set_compatibility(level, subject)


def _catalog_with(tmp_path: Path, version: int, change: dict[str, object], drop: str = "") -> Catalog:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_ROOT / "avro", root / "avro")
    shutil.copy(SCHEMAS_ROOT / "subjects.toml", root / "subjects.toml")
    payload = json.loads((root / "avro" / "task" / f"task.v{version - 1}.avsc").read_text())
    payload["fields"] = [spec for spec in payload["fields"] if spec["name"] != drop] + [change]
    (root / "avro" / "task" / f"task.v{version}.avsc").write_text(json.dumps(payload))
    return Catalog.load(root)


def test_subject_names_follow_the_topic_name_strategy() -> None:
    assert subject_name("keel", "task") == "keel.task.changes-value"


async def test_register_sets_the_level_as_soon_as_the_subject_exists() -> None:
    registry = RecordingRegistry()
    outcomes = await register_subjects(registry, default_catalog(), PREFIX)
    assert all(outcome.is_ok for outcome in outcomes)
    task = "acme.task.changes-value"
    assert [c for c in registry.calls if task in c] == [
        f"register {task} v1",
        f"level {task} FULL_TRANSITIVE",
        f"register {task} v2",
        f"register {task} v3",
    ]
    for outcome in outcomes:
        assert outcome.level_after == "FULL_TRANSITIVE"
        assert await registry.get_compatibility(outcome.check.subject) == "FULL_TRANSITIVE"
    assert await registry.versions(task) == [1, 2, 3]
    again = await register_subjects(registry, default_catalog(), PREFIX)
    assert [sorted(o.check.registered) for o in again] == [[1], [1], [1, 2, 3]]
    assert all(not o.registered for o in again), "a second run registers nothing"


async def test_a_dry_run_changes_nothing() -> None:
    registry = InMemorySchemaRegistry()
    outcomes = await register_subjects(registry, default_catalog(), PREFIX, dry_run=True)
    assert [o.check.pending for o in outcomes] == [[1], [1], [1, 2, 3]]
    assert all(o.is_ok and o.dry_run for o in outcomes)
    assert await registry.subjects() == []


async def test_check_explains_a_breaking_version_and_register_refuses_it(tmp_path: Path) -> None:
    registry = InMemorySchemaRegistry()
    await register_subjects(registry, default_catalog(), PREFIX)
    broken = _catalog_with(tmp_path, 4, {"name": "owner", "type": "string"})
    (task,) = await check_subjects(registry, broken, PREFIX, ["task"])
    assert task.pending == [4]
    assert {issue.source for issue in task.issues} == {"registry"}
    assert all(issue.level == "FULL_TRANSITIVE" for issue in task.issues)
    first = task.issues[0].message
    assert first.startswith(
        "new reads old (registered versions 1, 2, 3): field 'payload.owner' was added without a default"
    )
    assert 'add "default": ""' in first
    outcomes = await register_subjects(registry, broken, PREFIX)
    assert not all(o.is_ok for o in outcomes)
    assert await registry.versions("acme.task.changes-value") == [1, 2, 3], "nothing registered"
    forced = await register_subjects(registry, broken, PREFIX, skip_check=True)
    (forced_task,) = [o for o in forced if o.check.entity == "task"]
    assert forced_task.error is not None
    assert forced_task.error.startswith("v4: acme.task.changes-value: new reads old (previous #1)")
    assert not forced_task.is_ok


async def test_the_configured_level_is_checked_before_the_subject_has_it(tmp_path: Path) -> None:
    registry = InMemorySchemaRegistry(global_level="NONE")
    # The registry (level NONE, no subject yet) would take the whole chain; subjects.toml's FULL_TRANSITIVE,
    # which `register` sets once v1 exists, refuses v4's field without default.
    broken = _catalog_with(tmp_path, 4, {"name": "labels2", "type": "int"})
    (task,) = await check_subjects(registry, broken, PREFIX, ["task"])
    assert task.subject_level is None
    assert task.effective_level == "NONE"
    assert [issue.source for issue in task.issues] == ["subjects.toml"] * len(task.issues)
    assert task.issues[0].message.startswith("new reads old (local v1, v2, v3): field 'payload.labels2' was added")


async def test_a_published_version_edited_locally_is_refused(tmp_path: Path) -> None:
    registry = InMemorySchemaRegistry()
    await register_subjects(registry, default_catalog(), PREFIX)
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_ROOT, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    v2 = root / "avro" / "task" / "task.v2.avsc"
    edited = json.loads(v2.read_text())
    edited["doc"] = "edited after release"
    v2.write_text(json.dumps(edited))
    (task,) = await check_subjects(registry, Catalog.load(root), PREFIX, ["task"])
    (issue,) = task.issues
    assert (issue.version, issue.source) == (2, "history")
    assert "v2 differs from registered version 2 of acme.task.changes-value: payload: 'doc'" in issue.message
    assert "A registered version is immutable: restore task.v2.avsc from version control" in issue.message


async def test_a_subject_with_another_level_is_checked_at_both(tmp_path: Path) -> None:
    registry = InMemorySchemaRegistry()
    await register_subjects(registry, default_catalog(), PREFIX)
    await registry.set_compatibility("BACKWARD", "acme.task.changes-value")
    # dropping `description` and re-adding `notes` as an int: v4 reads v3 (notes has a default) but not v1
    # (a string notes). The live BACKWARD level accepts it, the configured FULL_TRANSITIVE does not.
    broken = _catalog_with(tmp_path, 4, {"name": "notes", "type": "int", "default": 0}, drop="description")
    (task,) = await check_subjects(registry, broken, PREFIX, ["task"])
    assert task.effective_level == "BACKWARD"
    assert {issue.source for issue in task.issues} == {"subjects.toml"}
    assert any("field 'payload.notes' changed type from string to int" in i.message for i in task.issues)
