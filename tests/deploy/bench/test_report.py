"""The generated section of docs/performance.md is rewritten in place; what people wrote around it stays."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.bench.config import BenchConfig, Size
from deploy.bench.figures import Figure, Goal, Target
from deploy.bench.report import BEGIN, END, BenchReport, write_document


def report(ours: float) -> BenchReport:
    return BenchReport(
        tag="t1",
        started_at="2026-01-01 00:00 UTC",
        config=BenchConfig.of(Size.QUICK),
        machine={"cpu_model": "cpu", "cores": 2, "memory_gb": 4.0, "os": "Linux", "load_average_1_5_15": [1, 1, 1]},
        versions={"python": "3.11"},
        figures=[
            Figure(
                "codec.encode",
                "encode",
                "events/s",
                [ours],
                [100.0],
                "fastavro",
                target=Target(Goal.RATIO_AT_LEAST, 0.8),
            )
        ],
        stage_seconds={"codec": 1.0},
    )


def test_a_new_document_gets_the_section_and_a_rerun_replaces_only_it(tmp_path: Path) -> None:
    document = tmp_path / "performance.md"
    write_document(report(90.0), document)
    first = document.read_text()
    assert BEGIN in first
    assert END in first
    assert "| `codec.encode` | 90.0 events/s | 100 events/s | 0.90 |" in first
    prose_before, prose_after = "# Performance\n\nWritten by people.\n\n", "\n## Analysis\n\nAlso by people.\n"
    rest = first.split(BEGIN)[1]
    document.write_text(prose_before + BEGIN + rest.split(END)[0] + END + prose_after)
    write_document(report(70.0), document)
    second = document.read_text()
    assert second.startswith(prose_before)
    assert second.endswith(prose_after)
    assert "| 0.70 | ratio ≥ 0.8 | no |" in second
    assert "| 0.90 |" not in second
    assert second.count(BEGIN) == second.count(END) == 1


def test_the_json_holds_every_figure_with_its_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    report(90.0).write_json(path)
    written = json.loads(path.read_text())
    assert written["figures"]["codec.encode"]["ratio"] == 0.9
    assert written["figures"]["codec.encode"]["met"] is True
    assert written["run"]["size"] == "quick"


def test_a_tally_whose_landed_count_differs_from_what_was_sent_is_reported_lost(tmp_path: Path) -> None:
    run = report(90.0)
    run.tallies = {"project: a ops": {"sent": 400, "landed": 400}, "memory: b ops": {"sent": 600, "landed": 599}}
    assert run.lost == {"memory: b ops": {"sent": 600, "landed": 599}}
    path = tmp_path / "bench.json"
    run.write_json(path)
    assert json.loads(path.read_text())["tallies"] == run.tallies
    document = tmp_path / "performance.md"
    write_document(run, document)
    assert "999 items over 2 tallies — 1 with a difference" in document.read_text()
