"""The run's figures from plain inputs: percentiles, latencies, lag, catch-up, hotspots, decisions in words."""

from __future__ import annotations

import pytest

from deploy.demo.fleet import Reconnect
from deploy.demo.report import (
    catch_up_summary,
    contended_entities,
    example_decisions,
    hotspots,
    lag_series,
    latencies,
    percentile,
)
from projections.conflict_rules import ALL_FIELDS, Decision
from projections.decisions import DecisionRecord


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.5, 0.0), ([7], 0.99, 7.0), ([1, 2, 3, 4], 0.5, 2.0), (list(range(1, 101)), 0.99, 99.0), ([5, 1], 1.0, 5.0)],
)
def test_percentile_is_the_nearest_rank(values: list[float], fraction: float, expected: float) -> None:
    assert percentile(values, fraction) == expected


def test_latency_pairs_ops_found_on_both_sides_and_buckets_them_by_second_of_acceptance() -> None:
    accepted = {("d1", 1): 10_000, ("d1", 2): 10_400, ("d2", 1): 11_900, ("d2", 2): 12_000}
    applied = {("d1", 1): 10_020, ("d1", 2): 10_450, ("d2", 1): 14_900}
    pairs = latencies(accepted, applied)
    assert pairs == [(10_000, 20), (10_400, 50), (11_900, 3000)]
    series = lag_series(pairs, started_at_ms=10_000)
    assert series == [
        {"t": 0.0, "p50_ms": 20.0, "max_ms": 50.0, "ops": 2.0},
        {"t": 1.0, "p50_ms": 3000.0, "max_ms": 3000.0, "ops": 1.0},
    ]


def test_catch_up_names_the_slowest_and_the_longest_away() -> None:
    reconnects = [
        Reconnect("a", offline_s=50.0, online_at_s=60.0, catch_up_s=1.5, pending_at_reconnect=12),
        Reconnect("b", offline_s=5.0, online_at_s=20.0, catch_up_s=4.0, pending_at_reconnect=2),
        Reconnect("c", offline_s=8.0, online_at_s=30.0, catch_up_s=None, pending_at_reconnect=1),
    ]
    summary = catch_up_summary(reconnects)
    assert (summary["reconnects"], summary["caught_up"], summary["max_catch_up_s"]) == (3, 2, 4.0)
    assert summary["slowest"]["device_id"] == "b"
    assert summary["longest_offline"] == {
        "device_id": "a",
        "offline_s": 50.0,
        "online_at_s": 60.0,
        "catch_up_s": 1.5,
        "pending_at_reconnect": 12,
    }
    assert catch_up_summary([]) == {
        "reconnects": 0,
        "caught_up": 0,
        "max_catch_up_s": 0.0,
        "slowest": None,
        "longest_offline": None,
    }


def test_hotspots_rank_fields_by_conflicts_and_name_the_busiest_entities() -> None:
    rows = [("task", "t1", "title")] * 3 + [
        ("task", "t2", "title"),
        ("task", "t1", ALL_FIELDS),
        ("project", "p1", "name"),
    ]
    spots = hotspots(rows)
    assert [(s.label, s.conflicts) for s in spots] == [
        ("task.title", 4),
        ("project.name", 1),
        ("task (delete vs edit)", 1),
    ]
    assert spots[0].top_entities == (("t1", 3), ("t2", 1))
    assert spots[0].as_json()["top_entities"][0] == {"entity_id": "t1", "conflicts": 3}


def test_contended_entities_are_counted_per_tenant() -> None:
    rows = [("acme", "task", "t1")] * 2 + [("globex", "task", "t1"), ("acme", "comment", "c1")]
    assert contended_entities(rows, top=2) == [
        {"tenant_id": "acme", "entity_type": "task", "entity_id": "t1", "conflicts": 2},
        {"tenant_id": "acme", "entity_type": "comment", "entity_id": "c1", "conflicts": 1},
    ]


def decision(n: int, field: str, entity_type: str = "task") -> DecisionRecord:
    return DecisionRecord(
        Decision(
            decision_id=f"d{n:02d}",
            tenant_id="acme",
            entity_type=entity_type,
            entity_id=f"e{n}",
            field=field,
            rule="delete-wins" if field == ALL_FIELDS else "last-writer-wins",
            winner_event_id=f"w{n}",
            winner_device_id="laptop",
            winner_value=None if field == ALL_FIELDS else f"kept {n}",
            loser_event_id=f"l{n}",
            loser_device_id="phone",
            loser_value=None if field == ALL_FIELDS else f"lost {n}",
            explanation="kept the later edit",
        ),
        decided_at_ms=1_750_000_000_000 + n,
    )


def test_example_decisions_prefer_variety_and_read_as_sentences() -> None:
    records = [decision(1, "title"), decision(2, "title"), decision(3, "status"), decision(4, ALL_FIELDS)]
    examples = example_decisions(records)
    assert len(examples) == 3
    assert "the whole entity" in examples[0]
    assert "field 'title'" in examples[1]
    assert "field 'status'" in examples[2]
    assert all("Why: kept the later edit." in text for text in examples)
    assert len(example_decisions(records[:2])) == 2
    assert example_decisions([]) == []
