"""The HTML report: self-contained (no scripts, no external references), every plot present as inline SVG."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deploy.demo.html_report import render_html, write_html_report
from deploy.demo.svg import Band, Series, bar_chart, line_chart, nice_ticks


def report(converged: bool = True) -> dict[str, Any]:
    timeline = [
        {
            "t": float(t),
            "written": 10 * t,
            "acknowledged": 9 * t,
            "projected": 8 * t,
            "device_backlog": t % 7,
            "projector_backlog": t % 3,
            "online": 8 - t % 2,
            "connected": 7,
            "conflicts": t // 4,
            "retries": t // 2,
            "incidents": [],
        }
        for t in range(40)
    ]
    return {
        "converged": converged,
        "run_id": "r1",
        "started_at": "2026-01-01T00:00:00+00:00",
        "seed": 7,
        "chaos": "standard",
        "duration_s": 30.0,
        "wall_s": 41.0,
        "devices": 8,
        "tenants": 2,
        "lost": 0,
        "duplicated": 0,
        "acked_ops": 350,
        "projected_ops": 350,
        "conflicts": 9,
        "p50_ms": 15.0,
        "p99_ms": 4200.0,
        "max_catch_up_s": 4.5,
        "timeline": timeline,
        "lag": [{"t": float(t), "p50_ms": 15.0 + t, "max_ms": 40.0 + 10 * t, "ops": 3.0} for t in range(30)],
        "incidents": [
            {
                "kind": "kafka-cut",
                "description": "gateway→Kafka path cut for 8s",
                "started_at_s": 8.5,
                "ended_at_s": 16.5,
                "ok": True,
                "detail": "disabled kafka-1 <for> 8s",
            }
        ],
        "hotspots": [
            {
                "label": "task.title",
                "conflicts": 5,
                "entity_type": "task",
                "top_entities": [{"entity_id": "t1", "conflicts": 3}],
            },
            {
                "label": "task.status",
                "conflicts": 4,
                "entity_type": "task",
                "top_entities": [{"entity_id": "t2", "conflicts": 4}],
            },
        ],
        "contended_entities": [
            {"tenant_id": "acme", "entity_type": "task", "entity_id": "t2", "conflicts": 4},
            {"tenant_id": "acme", "entity_type": "comment", "entity_id": "acme-laptop-09-comment-12", "conflicts": 3},
        ],
        "example_decisions": ['Decision 1 (last-writer-wins)\n  Kept: "a"', "Decision 2", "Decision 3"],
        "catch_up": {
            "longest_offline": {
                "device_id": "acme-phone-03",
                "offline_s": 13.0,
                "catch_up_s": 1.5,
                "pending_at_reconnect": 3,
            }
        },
        "per_tenant": {"acme": {"devices": 4, "devices_matching": 4, "digests": {"task.v2": "abc"}}},
        "checker": {"acknowledged": 350, "applied": 350, "log_records": 360, "findings": []},
        "names": {
            "topic_prefix": "demo-r1",
            "pg_schema": "demo_r1",
            "consumer_group": "demo-r1",
            "logs": ".keel/demo/r1",
        },
    }


def test_the_page_holds_every_plot_and_needs_nothing_from_elsewhere(tmp_path: Path) -> None:
    path = write_html_report(report(), tmp_path / "demo.html")
    page = path.read_text()
    assert page.startswith("<!doctype html>")
    for chart in ("plot-ops", "plot-backlog", "plot-lag", "plot-devices", "plot-hotspots", "plot-entities"):
        assert f"id='{chart}'" in page
    assert page.count("<polyline") == 3 + 2 + 2 + 3
    assert page.count("class='bar'") == 2 + 2, "two hotspots, two contended entities"
    assert "<script" not in page
    assert not re.search(r"(src|href)=", page)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "CONVERGED" in page
    assert "disabled kafka-1 &lt;for&gt; 8s" in page, "text from the run is escaped"
    assert "acme · task t2" in page
    assert "acme · comment acme-laptop-09-com…" in page, "long labels are shortened to fit"


def test_a_run_that_did_not_converge_says_so_and_lists_the_findings() -> None:
    failed = report(converged=False)
    failed["checker"]["findings"] = [{"kind": "lost", "subject": "d1", "detail": "seq 5"}]
    failed["drain_stuck"] = [{"device_id": "d2", "pending": 4, "quarantined": 0, "last_error": "push: HTTP 503"}]
    page = render_html(failed)
    assert "NOT CONVERGED" in page
    assert "<b>lost</b> d1: seq 5" in page
    assert "<b>d2</b>: 4 ops queued; last error: push: HTTP 503" in page


def test_a_run_without_conflicts_or_incidents_still_renders() -> None:
    quiet = report()
    quiet.update({"hotspots": [], "contended_entities": [], "incidents": [], "example_decisions": [], "lag": []})
    page = render_html(quiet)
    assert "no conflicts in this run" in page
    assert "No incidents" in page


def test_charts_scale_to_their_data_and_shade_bands() -> None:
    svg = line_chart("t", [Series("s", [(0, 0), (10, 95)], "#123456")], bands=[Band(2, 4, "cut")], chart_id="c")
    assert "class='band'" in svg
    assert ">100<" in svg, "the y axis ends on a round tick above the data"
    assert nice_ticks(95) == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    assert nice_ticks(0) == [0.0, 1.0]
    bars = bar_chart("b", [("x", 3.0), ("y", 1.5)])
    assert bars.count("class='bar'") == 2
    assert "nothing to show" in bar_chart("b", [])
