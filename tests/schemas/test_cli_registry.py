"""`keel schemas` against the real registry: the catalog's chain registers, breaking changes are refused twice."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from schemas.catalog import SCHEMAS_ROOT, default_catalog
from schemas.cli import app
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.support.services import Services

pytestmark = pytest.mark.integration

runner = CliRunner()


def _invoke(services: Services, *args: str) -> Result:
    return runner.invoke(app, [*args, "--registry-url", services.registry_url])


def _registry_state(services: Services, prefix: str) -> dict[str, tuple[list[int], str | None]]:
    async def read() -> dict[str, tuple[list[int], str | None]]:
        registry = ConfluentSchemaRegistry(services.registry_url)
        try:
            state = {}
            for entity in default_catalog().entities():
                subject = f"{prefix}.{entity}.changes-value"
                state[entity] = (await registry.versions(subject), await registry.get_compatibility(subject))
            return state
        finally:
            await registry.close()

    return asyncio.run(read())


def _catalog(tmp_path: Path, task_level: str = "FULL_TRANSITIVE") -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_ROOT / "avro", root / "avro")
    toml = (SCHEMAS_ROOT / "subjects.toml").read_text()
    (root / "subjects.toml").write_text(
        toml.replace('compatibility = "FULL_TRANSITIVE"', f'compatibility = "{task_level}"', 1)
    )
    return root


def _catalog_with_task_v4(
    tmp_path: Path, change: dict[str, object], *, drop: str = "", task_level: str = "FULL_TRANSITIVE"
) -> Path:
    root = _catalog(tmp_path, task_level)
    payload = json.loads((root / "avro" / "task" / "task.v3.avsc").read_text())
    payload["fields"] = [spec for spec in payload["fields"] if spec["name"] != drop] + [change]
    (root / "avro" / "task" / "task.v4.avsc").write_text(json.dumps(payload))
    return root


def test_the_catalog_chain_registers_and_levels_read_back(services: Services, topic_prefix: str) -> None:
    dry = _invoke(services, "register", "--dry-run", "--prefix", topic_prefix)
    assert dry.exit_code == 0, dry.output
    assert "  v3  would register" in dry.output
    assert "level: inherited → FULL_TRANSITIVE (would set)" in dry.output
    assert _registry_state(services, topic_prefix)["task"] == ([], None), "a dry run changes nothing"

    done = _invoke(services, "register", "--prefix", topic_prefix)
    assert done.exit_code == 0, done.output
    assert done.output.rstrip().endswith("register: done")
    assert _registry_state(services, topic_prefix) == {
        "comment": ([1], "FULL_TRANSITIVE"),
        "project": ([1], "FULL_TRANSITIVE"),
        "task": ([1, 2, 3], "FULL_TRANSITIVE"),
    }

    listed = _invoke(services, "list", "--prefix", topic_prefix, "--json")
    assert listed.exit_code == 0, listed.output
    subjects = {s["entity"]: s for s in json.loads(listed.output)["subjects"]}
    assert sorted(subjects["task"]["registered"]) == ["1", "2", "3"]
    assert subjects["task"]["subject"] == f"{topic_prefix}.task.changes-value"
    assert (subjects["task"]["subject_level"], subjects["task"]["pending"]) == ("FULL_TRANSITIVE", [])

    checked = _invoke(services, "check", "--prefix", topic_prefix)
    assert checked.exit_code == 0, checked.output
    assert "check: every local version can be registered" in checked.output
    again = _invoke(services, "register", "--prefix", topic_prefix)
    assert again.exit_code == 0, again.output
    assert "  v1  already registered" in again.output

    shown = _invoke(services, "show", "task", "--registry", "--version", "2", "--payload", "--prefix", topic_prefix)
    assert shown.exit_code == 0, shown.output
    assert "description" in [f["name"] for f in json.loads(shown.output.split("\n", 1)[1])["fields"]]
    same = _invoke(services, "diff", "task", "registry", "3", "--prefix", topic_prefix)
    assert same.exit_code == 0, same.output
    assert same.output.startswith(f"{topic_prefix}.task.changes-value version 3 (registry) → task v3: 0 change(s)")


def test_a_transitive_break_is_refused_by_check_and_by_the_registry(
    services: Services, topic_prefix: str, tmp_path: Path
) -> None:
    level = "BACKWARD_TRANSITIVE"
    chain = _catalog(tmp_path / "chain", level)
    assert _invoke(services, "register", "--prefix", topic_prefix, "--catalog", str(chain)).exit_code == 0
    assert _registry_state(services, topic_prefix)["task"] == ([1, 2, 3], level)
    # v4 drops `description` (once `notes`) and brings back `notes` as an int: v4 reads v3's data (notes
    # takes its default) but not v1's, which holds notes as a string.
    root = _catalog_with_task_v4(
        tmp_path, {"name": "notes", "type": "int", "default": 0}, drop="description", task_level=level
    )
    assert runner.invoke(app, ["gate", "--catalog", str(root)]).exit_code == 1

    checked = _invoke(services, "check", "--prefix", topic_prefix, "--catalog", str(root), "--entity", "task")
    assert checked.exit_code == 1
    assert "  v4  REFUSED:" in checked.output
    assert (
        f"[registry, {level}] new reads old (registered version 1): field 'payload.notes' changed type "
        "from string to int: readers of the new schema cannot read string as int" in checked.output
    )
    assert "registered version 2" not in checked.output
    assert "registered version 3" not in checked.output, "the break is with v1 only"

    held = _invoke(services, "register", "--prefix", topic_prefix, "--catalog", str(root))
    assert held.exit_code == 1
    assert "register: nothing registered, the check failed" in held.output

    forced = _invoke(services, "register", "--skip-check", "--prefix", topic_prefix, "--catalog", str(root))
    assert forced.exit_code == 1, forced.output
    assert (
        f"the registry refused v4: {topic_prefix}.task.changes-value: the registry refused the schema" in forced.output
    )
    assert _registry_state(services, topic_prefix)["task"] == ([1, 2, 3], level)


def test_a_field_without_default_gets_an_actionable_explanation(
    services: Services, topic_prefix: str, tmp_path: Path
) -> None:
    assert _invoke(services, "register", "--prefix", topic_prefix, "--entity", "task").exit_code == 0
    root = _catalog_with_task_v4(tmp_path, {"name": "owner", "type": "string"})
    checked = _invoke(services, "check", "--prefix", topic_prefix, "--catalog", str(root), "--entity", "task")
    assert checked.exit_code == 1
    assert (
        "field 'payload.owner' was added without a default: readers of the new schema cannot fill it from "
        'records written with the previous schema; add "default": ""' in checked.output
    )
    fixed = _catalog_with_task_v4(tmp_path / "fixed", {"name": "owner", "type": "string", "default": ""})
    registered = _invoke(services, "register", "--prefix", topic_prefix, "--catalog", str(fixed), "--entity", "task")
    assert registered.exit_code == 0, registered.output
    assert "  v4  registered (id " in registered.output
    assert _registry_state(services, topic_prefix)["task"] == ([1, 2, 3, 4], "FULL_TRANSITIVE")


def test_an_unreachable_registry_is_exit_2() -> None:
    result = runner.invoke(app, ["check", "--registry-url", "http://127.0.0.1:9/apis/ccompat/v7"])
    assert result.exit_code == 2
    assert "schema registry unavailable" in result.output


def test_check_refuses_a_registered_version_edited_afterwards(
    services: Services, topic_prefix: str, tmp_path: Path
) -> None:
    done = _invoke(services, "register", "--prefix", topic_prefix, "--entity", "comment")
    assert done.exit_code == 0, done.output
    root = _catalog(tmp_path)
    source = root / "avro" / "comment" / "comment.v1.avsc"
    payload = json.loads(source.read_text())
    payload["fields"][1]["doc"] = "Encrypted in the projection tables when a field keyring is configured."
    source.write_text(json.dumps(payload, indent=2))

    checked = _invoke(services, "check", "--prefix", topic_prefix, "--entity", "comment", "--catalog", str(root))
    assert checked.exit_code == 1, checked.output
    assert f"v1 differs from registered version 1 of {topic_prefix}.comment.changes-value" in checked.output
    assert "payload.body: 'doc' added" in checked.output
    assert "restore comment.v1.avsc from version control" in checked.output
    refused = _invoke(services, "register", "--prefix", topic_prefix, "--entity", "comment", "--catalog", str(root))
    assert refused.exit_code == 1, refused.output
    assert _registry_state(services, topic_prefix)["comment"] == ([1], "FULL_TRANSITIVE"), "no stray version 2"
