"""`keel schemas` offline commands: compat exit codes, the CI gate, diff, show and simulate."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import typer
from typer.testing import CliRunner

from deploy.cli import app as keel_app
from schemas.catalog import SCHEMAS_ROOT
from schemas.cli import app
from tests.schemas.reference_cases import A_INT, CHAIN_CASES, f, record

runner = CliRunner()


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _compat(level: str, new: Path, *previous: Path) -> tuple[int, str]:
    args = ["compat", "--level", level, "--new", str(new)]
    for path in previous:
        args += ["--previous", str(path)]
    result = runner.invoke(app, args)
    return result.exit_code, result.output


def test_compat_exit_0_when_compatible(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.avsc", record(A_INT))
    new = _write(tmp_path, "new.avsc", record(A_INT, f("b", "string", default="")))
    code, output = _compat("FULL", new, old)
    assert code == 0
    assert output.startswith(f"compatible at FULL: {new} against {old}")


def test_compat_exit_1_names_the_field_and_the_rule(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.avsc", record(A_INT))
    new = _write(tmp_path, "new.avsc", record(A_INT, f("owner", "string")))
    code, output = _compat("backward", new, old)
    assert code == 1
    assert f"INCOMPATIBLE at BACKWARD: {new} against {old}" in output
    assert "field 'owner' was added without a default" in output
    assert 'add "default": ""' in output
    assert "rule broken: a reader field the writer lacks must have a default" in output


def test_compat_transitive_levels_use_every_previous_file_oldest_first(tmp_path: Path) -> None:
    case = CHAIN_CASES[0]
    previous = [_write(tmp_path, f"v{i}.avsc", text) for i, text in enumerate(case.previous, start=1)]
    new = _write(tmp_path, "new.avsc", case.new)
    assert _compat("BACKWARD", new, *previous)[0] == 0
    code, output = _compat("BACKWARD_TRANSITIVE", new, *previous)
    assert code == 1
    assert f"new reads old ({previous[0]}): field 'a' changed type from string to int" in output
    assert _compat("BACKWARD", new, *reversed(previous))[0] == 1, "the last file given is the latest version"


@pytest.mark.parametrize(
    ("new_text", "level", "message"),
    [
        ('{"type": "record", "fields": [', "BACKWARD", "the new schema"),
        (
            '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "integer"}]}',
            "BACKWARD",
            "not a valid Avro",
        ),
        (record(A_INT), "SIDEWAYS", "unknown compatibility level SIDEWAYS"),
    ],
)
def test_compat_exit_2_for_unusable_input(tmp_path: Path, new_text: str, level: str, message: str) -> None:
    old = _write(tmp_path, "old.avsc", record(A_INT))
    new = _write(tmp_path, "new.avsc", new_text)
    code, output = _compat(level, new, old)
    assert code == 2
    assert message in output
    assert output.startswith("error: ")


def test_compat_exit_2_for_a_missing_or_invalid_previous_file(tmp_path: Path) -> None:
    new = _write(tmp_path, "new.avsc", record(A_INT))
    code, output = _compat("BACKWARD", new, tmp_path / "absent.avsc")
    assert code == 2
    assert "absent.avsc: cannot read" in output
    broken = _write(tmp_path, "broken.avsc", "[1, 2")
    code, output = _compat("BACKWARD", new, broken)
    assert code == 2
    assert f"previous schema #1 {broken} is not valid JSON" in output


@pytest.fixture
def keel_cli() -> Iterator[typer.Typer]:
    """The whole `keel` command; its callback points logging at the runner's streams, so restore it after."""
    structlog_config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield keel_app
    structlog.configure(**structlog_config)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_gate_passes_on_the_shipped_catalog_through_the_keel_command(keel_cli: typer.Typer) -> None:
    result = runner.invoke(keel_cli, ["schemas", "gate"])
    assert result.exit_code == 0, result.output
    assert "task v3: ok at FULL_TRANSITIVE against v1..v2" in result.output
    assert "schema gate: 5 version(s) compatible" in result.output


def _catalog_copy(tmp_path: Path) -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_ROOT / "avro", root / "avro")
    shutil.copy(SCHEMAS_ROOT / "subjects.toml", root / "subjects.toml")
    return root


def _add_task_version(root: Path, version: int, change: dict[str, object]) -> None:
    newest = json.loads((root / "avro" / "task" / "task.v3.avsc").read_text())
    newest["fields"].append(change)
    (root / "avro" / "task" / f"task.v{version}.avsc").write_text(json.dumps(newest))


def test_gate_fails_a_breaking_version_with_an_explanation(tmp_path: Path) -> None:
    root = _catalog_copy(tmp_path)
    _add_task_version(root, 4, {"name": "owner", "type": "string"})
    result = runner.invoke(app, ["gate", "--catalog", str(root)])
    assert result.exit_code == 1
    assert "task v4: INCOMPATIBLE at FULL_TRANSITIVE against v1..v3" in result.output
    assert "new reads old (v1): field 'payload.owner' was added without a default" in result.output
    assert "schema gate: 1 incompatible version(s)" in result.output


def test_gate_refuses_a_field_named_like_another_fields_alias(tmp_path: Path) -> None:
    root = _catalog_copy(tmp_path)
    _add_task_version(root, 4, {"name": "notes", "type": "string", "default": ""})
    result = runner.invoke(app, ["gate", "--catalog", str(root)])
    assert result.exit_code == 1
    assert (
        "field 'payload.notes' and field 'payload.description' both answer to 'notes': readers could not tell "
        "them apart; choose another name" in result.output
    )


def test_gate_exit_2_for_an_unusable_catalog(tmp_path: Path) -> None:
    root = _catalog_copy(tmp_path)
    (root / "avro" / "task" / "task.v4.avsc").write_text("{not json")
    result = runner.invoke(app, ["gate", "--catalog", str(root)])
    assert result.exit_code == 2
    assert "task.v4.avsc: invalid JSON at line 1" in result.output


def test_diff_between_local_versions() -> None:
    result = runner.invoke(app, ["diff", "task", "2", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "task v2 → task v3: 3 change(s)"
    assert "  ! payload.due     deprecated: v3" in lines
    assert "  + payload.due_at  added: null | long(timestamp-millis), default null" in lines
    assert "  + payload.labels  added: array<string>, default []" in lines
    assert "BACKWARD (new reads old): compatible" in lines
    v1_v2 = runner.invoke(app, ["diff", "task", "1", "2"]).output
    assert "payload.description  renamed: from 'notes' (alias)" in v1_v2
    assert "payload.status       enum-symbols-added: TaskStatus: DOING" in v1_v2


def test_diff_of_files_shows_changes_and_the_verdict(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.avsc", record(A_INT, f("gone", "string")))
    new = _write(tmp_path, "new.avsc", record(f("a", "long", default=0), f("owner", "string")))
    result = runner.invoke(app, ["diff", str(old), str(new)])
    assert result.exit_code == 0, result.output
    assert "~ a      default-changed: default added: 0" in result.output
    assert "~ a      type-changed: int → long (Avro promotes it)" in result.output
    assert "+ owner  added: string, NO default" in result.output
    assert "- gone   removed: string, had NO default" in result.output
    assert "BACKWARD (new reads old): INCOMPATIBLE" in result.output
    assert "FORWARD (old reads new): INCOMPATIBLE" in result.output


def test_diff_rejects_bad_references() -> None:
    assert runner.invoke(app, ["diff", "task", "1", "9"]).exit_code == 2
    bad = runner.invoke(app, ["diff", "task", "1", "latest"])
    assert bad.exit_code == 2
    assert "bad version reference 'latest'" in bad.output
    assert runner.invoke(app, ["diff", "ghost", "1", "2"]).exit_code == 2
    assert runner.invoke(app, ["diff", "task"]).exit_code == 2


def test_show_a_local_version() -> None:
    result = runner.invoke(app, ["show", "task", "--version", "2", "--payload", "--prefix", "acme"])
    assert result.exit_code == 0, result.output
    header, body = result.output.split("\n", 1)
    assert header.startswith("// task v2 (")
    assert header.endswith("subject acme.task.changes-value")
    assert [field["name"] for field in json.loads(body)["fields"]][:2] == ["title", "description"]
    full = runner.invoke(app, ["show", "acme.task.changes-value", "--prefix", "acme"])
    assert json.loads(full.output.split("\n", 1)[1])["name"] == "TaskChange"
    missing = runner.invoke(app, ["show", "task", "--version", "7"])
    assert missing.exit_code == 2
    assert "task has no schema version 7" in missing.output


def test_simulate_generated_upcast_reports_throughput_and_cautions() -> None:
    result = runner.invoke(app, ["simulate", "task", "--generate", "300", "--from-version", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{\n") :])
    assert (report["records"], report["migrated"], report["failed"]) == (300, 300, 0)
    assert report["throughput_per_s"] > 0
    assert report["steps"] == {"upcast_task_v2_v3": 300, "normalize_task": 300}
    assert report["cautions"]["due"] > 0, "relative due dates cannot become timestamps"
    assert "names no absolute date" in report["caution_examples"]["due"]
    assert report["not_round_trip"] == {}


def test_simulate_a_downcast_counts_lost_fields(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "task", "--generate", "200", "--from-version", "3", "--to-version", "1"])
    assert result.exit_code == 0, result.output
    assert "task: 200 records (v3 x200) → v1" in result.output
    assert "caution      labels:" in result.output
    assert "not restored by migrating back:" in result.output
    assert "priority" in result.output.split("not restored by migrating back:")[1]


def test_simulate_a_file_counts_every_bad_record_and_exits_1(tmp_path: Path) -> None:
    good = {"title": "a", "notes": "b", "due": "2025-07-01", "status": "DONE", "project_id": None}
    lines = [
        json.dumps(good),
        "{broken",
        json.dumps({**good, "status": "LATER"}),
        json.dumps({"schema_version": 2, "payload": {**good, "notes": None}, "changed_fields": []}),
        json.dumps({"schema_version": 2, "payload": {"title": "x" * 501}, "changed_fields": ["title"]}),
        json.dumps({"schema_version": 9, "payload": good}),
        "[1]",
        "",
    ]
    data = _write(tmp_path, "tasks.jsonl", "\n".join(lines))
    result = runner.invoke(app, ["simulate", "task", "--input", str(data), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output[result.output.index("{\n") :])
    assert (report["records"], report["migrated"], report["failed"]) == (7, 1, 6)
    assert report["failure_reasons"] == {
        "unreadable input": 2,
        "invalid in its source version": 3,
        "unknown source version": 1,
    }
    assert report["failure_examples"][0] == "record 2: invalid JSON: Expecting property name enclosed in double quotes"
    assert any("field 'title' is 501 characters long, the limit is 500" in e for e in report["failure_examples"])


def test_simulate_needs_exactly_one_source(tmp_path: Path) -> None:
    assert runner.invoke(app, ["simulate", "task"]).exit_code == 2
    missing = runner.invoke(app, ["simulate", "task", "--input", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2
    assert "cannot read" in missing.output
