"""A registered version's text never changes: policy lives in subjects.toml, the gate checks a committed lock
of fingerprints offline, and `check` compares each local version with the registry's text of that version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.errors import ConfigurationError
from schemas.catalog import SCHEMAS_ROOT, Catalog, default_catalog
from schemas.cli import app
from schemas.governance import check_subjects, register_subjects
from schemas.registry import InMemorySchemaRegistry, RegisteredSchema
from schemas.version_lock import LOCK_FILE, VersionLock, describe_differences, fingerprint

runner = CliRunner()
PREFIX = "acme"


def _copy(tmp_path: Path, *, with_lock: bool = True) -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_ROOT / "avro", root / "avro")
    shutil.copy(SCHEMAS_ROOT / "subjects.toml", root / "subjects.toml")
    if with_lock:
        shutil.copy(SCHEMAS_ROOT / LOCK_FILE, root / LOCK_FILE)
    return root


def _edit_comment_body(root: Path, **properties: object) -> None:
    """The mistake that happened: a property and a doc added to a field of a registered version."""
    path = root / "avro" / "comment" / "comment.v1.avsc"
    payload = json.loads(path.read_text())
    for spec in payload["fields"]:
        if spec["name"] == "body":
            spec.update(properties)
    path.write_text(json.dumps(payload, indent=4))


def _set_comment_policy(root: Path, line: str) -> None:
    toml = root / "subjects.toml"
    toml.write_text(toml.read_text().replace('sensitive_fields = ["body"]', line))


# ------------------------------------------------------------------ policy, not contract


def test_sensitive_fields_come_from_subjects_toml_and_leave_the_schema_text_alone() -> None:
    catalog = default_catalog()
    assert catalog.policy("comment").sensitive_fields == {"body"}
    assert catalog.sensitive_fields("comment") == {"body"}
    assert catalog.schema("comment", 1).field("body").sensitive
    assert not catalog.schema("comment", 1).field("author").sensitive
    assert catalog.sensitive_fields("task") == frozenset()
    assert "keel.sensitive" not in catalog.schema("comment", 1).text


def test_the_shipped_comment_v1_is_the_text_first_registered() -> None:
    lock = VersionLock.read(SCHEMAS_ROOT / LOCK_FILE)
    assert lock is not None
    assert lock.problems(default_catalog()) == []
    assert sorted((entity, sorted(pinned)) for entity, pinned in lock.versions.items()) == [
        ("comment", [1]),
        ("project", [1]),
        ("task", [1, 2, 3]),
    ]


def test_a_policy_property_inside_a_schema_file_is_refused_with_the_way_out(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _edit_comment_body(root, **{"keel.sensitive": True})
    with pytest.raises(ConfigurationError, match=r"comment.v1.avsc: 'keel.sensitive' on \['body'\].*subjects.toml"):
        Catalog.load(root)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('sensitive_fields = ["author", "title"]', "sensitive field 'title' is in no version of the schema"),
        ('sensitive_fields = "body"', "sensitive_fields must be a list of field names"),
    ],
)
def test_unusable_sensitive_fields_are_refused(tmp_path: Path, line: str, message: str) -> None:
    root = _copy(tmp_path)
    _set_comment_policy(root, line)
    with pytest.raises(ConfigurationError, match=message):
        Catalog.load(root)


def test_only_string_fields_may_be_sensitive(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    toml = root / "subjects.toml"
    toml.write_text(toml.read_text().replace("[entities.task]\n", '[entities.task]\nsensitive_fields = ["priority"]\n'))
    with pytest.raises(ConfigurationError, match=r"sensitive field 'priority' must be a string \(v2: int, v3: int\)"):
        Catalog.load(root)


# ------------------------------------------------------------------ offline: the lock and the gate


def test_the_gate_fails_when_a_pinned_version_changed(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _edit_comment_body(root, doc="Encrypted in the projection tables.")
    result = runner.invoke(app, ["gate", "--catalog", str(root)])
    assert result.exit_code == 1, result.output
    assert "comment v1: CHANGED AFTER REGISTRATION" in result.output
    assert f"comment v1 differs from the version pinned in {LOCK_FILE}" in result.output
    assert "restore comment.v1.avsc" in result.output
    assert "schema gate: 1 registered version(s) changed" in result.output


def test_whitespace_and_key_order_are_not_changes(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    path = root / "avro" / "comment" / "comment.v1.avsc"
    payload = json.loads(path.read_text())
    path.write_text(json.dumps(dict(reversed(list(payload.items()))), indent=8))
    result = runner.invoke(app, ["gate", "--catalog", str(root)])
    assert result.exit_code == 0, result.output


def test_a_removed_pinned_version_fails_the_gate(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "avro" / "task" / "task.v3.avsc").unlink()
    toml = root / "subjects.toml"
    toml.write_text(toml.read_text().replace("newest_version = 3", "newest_version = 2"))
    result = runner.invoke(app, ["gate", "--catalog", str(root)])
    assert result.exit_code == 1
    assert "task v3 is pinned in registered.lock.json but missing from the catalog" in result.output


def test_lock_appends_new_versions_and_never_rewrites_a_pinned_one(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    v3 = json.loads((root / "avro" / "task" / "task.v3.avsc").read_text())
    v3["fields"].append({"name": "estimate", "type": "int", "default": 0})
    (root / "avro" / "task" / "task.v4.avsc").write_text(json.dumps(v3))
    before = json.loads((root / LOCK_FILE).read_text())

    gate = runner.invoke(app, ["gate", "--catalog", str(root)])
    assert gate.exit_code == 0, gate.output
    assert "note: not pinned yet: task v4" in gate.output

    locked = runner.invoke(app, ["lock", "--catalog", str(root)])
    assert locked.exit_code == 0, locked.output
    after = json.loads((root / LOCK_FILE).read_text())
    assert after["versions"]["task"]["4"] == fingerprint(Catalog.load(root).schema("task", 4))
    del after["versions"]["task"]["4"]
    assert after == before, "existing entries are kept exactly"
    assert "every version is pinned already" in runner.invoke(app, ["lock", "--catalog", str(root)]).output

    _edit_comment_body(root, doc="edited")
    refused = runner.invoke(app, ["lock", "--catalog", str(root)])
    assert refused.exit_code == 1
    assert "lock: nothing written, 1 pinned version(s) changed" in refused.output
    assert json.loads((root / LOCK_FILE).read_text())["versions"]["comment"] == before["versions"]["comment"]


def test_a_catalog_without_a_lock_passes_the_gate_with_a_note_and_lock_creates_it(tmp_path: Path) -> None:
    root = _copy(tmp_path, with_lock=False)
    gate = runner.invoke(app, ["gate", "--catalog", str(root)])
    assert gate.exit_code == 0, gate.output
    assert f"note: no {LOCK_FILE}" in gate.output
    assert runner.invoke(app, ["lock", "--catalog", str(root)]).exit_code == 0
    assert (root / LOCK_FILE).read_text() == (SCHEMAS_ROOT / LOCK_FILE).read_text()


def test_an_unreadable_lock_is_unusable_input(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / LOCK_FILE).write_text('{"versions": {"task": {"one": "x"}}}')
    result = runner.invoke(app, ["gate", "--catalog", str(root)])
    assert result.exit_code == 2
    assert "versions must map entity → version number → sha256" in result.output


# ------------------------------------------------------------------ online: the registry's text of version N


def test_differences_name_docs_and_custom_properties() -> None:
    old = json.loads(default_catalog().schema("comment", 1).text)
    new = json.loads(default_catalog().schema("comment", 1).text)
    (payload,) = [spec for spec in new["fields"] if spec["name"] == "payload"]
    body = payload["type"][1]["fields"][1]
    assert body["name"] == "body"
    body["keel.sensitive"] = True
    body["doc"] = "Encrypted."
    assert describe_differences(old, new) == [
        "payload.body: 'doc' added (\"Encrypted.\")",
        "payload.body: 'keel.sensitive' added (true)",
    ]
    assert describe_differences(old, json.loads(json.dumps(old, indent=3))) == []


async def test_check_refuses_a_registered_newest_version_edited_locally(tmp_path: Path) -> None:
    registry = InMemorySchemaRegistry()
    await register_subjects(registry, default_catalog(), PREFIX)
    root = _copy(tmp_path)
    _edit_comment_body(root, doc="Encrypted in the projection tables.")
    (comment,) = await check_subjects(registry, Catalog.load(root), PREFIX, ["comment"])
    (issue,) = comment.issues
    assert (issue.version, issue.source) == (1, "history")
    assert "v1 differs from registered version 1 of acme.comment.changes-value" in issue.message
    assert "payload.body: 'doc' added" in issue.message
    assert "restore comment.v1.avsc from version control" in issue.message
    assert comment.pending == [1]

    outcomes = await register_subjects(registry, Catalog.load(root), PREFIX, skip_check=True, entities=["comment"])
    assert not outcomes[0].is_ok
    assert await registry.versions("acme.comment.changes-value") == [1], "no stray version 2"


class CanonicalRegistry(InMemorySchemaRegistry):
    """A registry that, like Apicurio, finds a schema by its canonical form (docs ignored)."""

    async def lookup(self, subject: str, schema: str) -> RegisteredSchema | None:
        for registered in [await self.get_version(subject, n) for n in await self.versions(subject)]:
            if _without_docs(json.loads(registered.schema)) == _without_docs(json.loads(schema)):
                return registered
        return None


def _without_docs(document: object) -> object:
    if isinstance(document, dict):
        return {k: _without_docs(v) for k, v in document.items() if k != "doc"}
    if isinstance(document, list):
        return [_without_docs(v) for v in document]
    return document


async def test_check_finds_the_registration_of_an_edit_after_merged_versions(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    task = root / "avro" / "task"
    v3 = json.loads((task / "task.v3.avsc").read_text())
    (task / "task.v4.avsc").write_text(json.dumps({**v3, "doc": "only the doc differs"}))
    v5 = {**v3, "fields": [*v3["fields"], {"name": "estimate", "type": "int", "default": 0}]}
    (task / "task.v5.avsc").write_text(json.dumps(v5))
    registry = CanonicalRegistry()
    await register_subjects(registry, Catalog.load(root), PREFIX, entities=["task"])
    (merged,) = await check_subjects(registry, Catalog.load(root), PREFIX, ["task"])
    assert {v: r.version for v, r in merged.registered.items()} == {1: 1, 2: 2, 3: 3, 4: 3, 5: 4}
    assert merged.issues == []

    v5["fields"][-1]["default"] = 1
    (task / "task.v5.avsc").write_text(json.dumps(v5))
    (check,) = await check_subjects(registry, Catalog.load(root), PREFIX, ["task"])
    (issue,) = check.issues
    assert issue.version == 5
    assert "v5 differs from registered version 4 of acme.task.changes-value" in issue.message
    assert "payload.estimate: 'default' 0 → 1" in issue.message
