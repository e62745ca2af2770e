"""`keel chaos list` and the set-up errors of `keel chaos run` (no scenario actually runs here)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from deploy.cli import app

runner = CliRunner()


def test_list_names_every_scenario_with_both_sizes() -> None:
    result = runner.invoke(app, ["chaos", "list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for name in ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "drill"):
        assert f"│ {name} " in result.output
    assert "50,000 events, 8 kill rounds" in result.output
    assert "1,000,000 events" in result.output


def test_an_unknown_scenario_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    page, report = tmp_path / "resilience.md", tmp_path / "r.json"
    result = runner.invoke(
        app, ["chaos", "run", "R42", "--json", str(report), "--figures", str(page)], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 2
    assert "unknown scenario 'R42'; known: R1, R2, R3, R4, R5, R6, R7, R8, R9, drill" in result.output
    assert not page.exists()
    assert not report.exists()


def test_a_size_that_does_not_exist_is_refused() -> None:
    result = runner.invoke(app, ["chaos", "run", "R1", "--size", "huge"], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert "huge" in result.output
