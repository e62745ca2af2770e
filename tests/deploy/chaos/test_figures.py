"""docs/resilience.md as the runner writes it: one row per (scenario, size), kept across runs, data round-trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.chaos.figures import load_results, render, update_figures


def result(scenario: str, size: str = "quick", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scenario": scenario,
        "title": f"title of {scenario}",
        "proves": "nothing is lost",
        "size": size,
        "seed": 7,
        "events": 50_000,
        "lost": 0,
        "duplicated": 0,
        "diverged": False,
        "duration_s": 95.4,
        "ok": True,
        "checks": [{"name": "caught up", "ok": True, "detail": "3.1 s"}],
        "figures": {
            "kills": 10,
            "rounds": [{"kind": "external"}],
            "max_stall_s": 0.25,
            "fault_log": [{"kind": "kill", "s": 1.5}, {"kind": "stop", "s": 2}],
        },
        "checker": {"findings": []},
        "notes": ["a note --> with a comment end in it"],
        "run_id": f"{scenario.lower()}-1",
        "started_at": "2026-11-26T00:00:00+00:00",
        "machine": {"cores": 2, "cpu_model": "test cpu", "memory_gb": 24, "load_average_1_5_15": [1.0, 1.5, 2.0]},
        "versions": {"python": "3.11.9", "kafka": "4.1.0", "postgresql": "17.2", "registry": "Apicurio 3"},
    }
    base.update(changes)
    return base


def test_each_run_replaces_its_own_row_and_keeps_the_others(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "resilience.md"
    update_figures(page, result("R3"))
    update_figures(page, result("R1"))
    update_figures(page, result("R1", seed=8, ok=False, lost=2))
    update_figures(page, result("R1", size="full", events=1_000_000))
    kept = load_results(page)
    assert sorted(kept) == ["R1/full", "R1/quick", "R3/quick"]
    assert kept["R1/quick"]["seed"] == 8
    assert "checker" not in kept["R1/quick"]  # findings stay in the run's JSON, not on the page
    assert "rounds" not in kept["R1/quick"]["figures"]
    assert kept["R3/quick"]["notes"] == ["a note --> with a comment end in it"]
    text = page.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| R")]
    assert [row.split(" | ")[1] for row in rows[:3]] == ["quick", "full", "quick"]  # R1 quick, R1 full, R3
    assert "| 2 | 0 | no | 95 s | **NO** |" in rows[0]
    assert "- **quick** (`make test`): 2 scenarios, 1 held, 191 s in all (3.2 min, one after the other)." in text
    assert "- **full** (`make test-long`): 1 scenario, 1 held, 95 s in all (1.6 min, one after the other)." in text
    assert "Machine: 2 cores (test cpu), 24 GB RAM" in text
    assert "| fault log | (kind kill, s 1.5); (kind stop, s 2) |" in text
    assert "| max stall s | 0.25 |" in text
    assert "Versions: Python 3.11.9, Kafka 4.1.0, PostgreSQL 17.2, Apicurio 3." in text


def test_the_page_is_a_pure_function_of_its_results() -> None:
    results = {"R2/quick": result("R2"), "drill/quick": result("drill")}
    assert render(results) == render(dict(reversed(list(results.items()))))
    assert render(results).index("## R2 (quick)") < render(results).index("## drill (quick)")


def section(page: str, heading: str) -> str:
    """The text of one scenario's section of a page."""
    return page.split(heading)[1].split("\n## ", maxsplit=1)[0].split("<!--", maxsplit=1)[0]


def test_rendering_a_loaded_page_gives_the_same_page(tmp_path: Path) -> None:
    page = tmp_path / "resilience.md"
    update_figures(
        page, result("R6", figures={"max_drain_s": 7.7, "drains": 3, "troubles": {"timeout": 1, "latency": 2}})
    )
    first = page.read_text(encoding="utf-8")
    assert first.index("| max drain s |") < first.index("| drains |")  # the run's order, not alphabetical
    assert "| troubles | timeout 1, latency 2 |" in first
    assert render(load_results(page)) == first
    update_figures(page, result("R1"))
    assert page.read_text(encoding="utf-8").count("| max drain s |") == 1
    second = page.read_text(encoding="utf-8")
    assert render(load_results(page)) == second
    assert section(second, "## R6") == section(first, "## R6")


def test_a_page_without_data_has_no_results(tmp_path: Path) -> None:
    page = tmp_path / "resilience.md"
    assert load_results(page) == {}
    page.write_text("# hand-written\n", encoding="utf-8")
    assert load_results(page) == {}
    assert "- **quick** (`make test`): no result on this page yet." in render({})
