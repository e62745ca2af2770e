"""The figures of a run, from the evidence it gathered: latency, catch-up, conflict hotspots, examples in words.

Pure functions over plain values; `deploy/demo/runner.py` gathers the inputs and writes the JSON report,
`deploy/demo/html_report.py` draws it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deploy.demo.fleet import Reconnect
from projections.conflict_rules import ALL_FIELDS
from projections.decisions import DecisionRecord, describe

__all__ = [
    "Hotspot",
    "catch_up_summary",
    "contended_entities",
    "example_decisions",
    "hotspots",
    "lag_series",
    "latencies",
    "percentile",
]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1) of the values; 0.0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def latencies(accepted_at_ms: Mapping[Any, int], applied_at_ms: Mapping[Any, int]) -> list[tuple[int, int]]:
    """(accepted at, push→projected ms) of every op found on both sides, in acceptance order."""
    pairs = [
        (accepted, applied_at_ms[key] - accepted) for key, accepted in accepted_at_ms.items() if key in applied_at_ms
    ]
    return sorted(pairs)


def lag_series(pairs: Iterable[tuple[int, int]], started_at_ms: int, bucket_s: float = 1.0) -> list[dict[str, float]]:
    """Per second of acceptance: median and highest push→projected latency, and how many ops."""
    buckets: dict[int, list[int]] = defaultdict(list)
    for accepted, latency in pairs:
        buckets[int((accepted - started_at_ms) / 1000 // bucket_s)].append(latency)
    return [
        {
            "t": round(bucket * bucket_s, 2),
            "p50_ms": percentile(values, 0.5),
            "max_ms": float(max(values)),
            "ops": float(len(values)),
        }
        for bucket, values in sorted(buckets.items())
    ]


def catch_up_summary(reconnects: Sequence[Reconnect]) -> dict[str, Any]:
    """The longest catch-up, and the catch-up of the device that was offline longest."""
    finished = [r for r in reconnects if r.catch_up_s is not None]
    longest_away = max(reconnects, key=lambda r: r.offline_s, default=None)
    slowest = max(finished, key=lambda r: r.catch_up_s or 0.0, default=None)
    return {
        "reconnects": len(reconnects),
        "caught_up": len(finished),
        "max_catch_up_s": round(slowest.catch_up_s or 0.0, 2) if slowest else 0.0,
        "slowest": _reconnect_json(slowest),
        "longest_offline": _reconnect_json(longest_away),
    }


def _reconnect_json(reconnect: Reconnect | None) -> dict[str, Any] | None:
    if reconnect is None:
        return None
    return {
        "device_id": reconnect.device_id,
        "offline_s": round(reconnect.offline_s, 2),
        "online_at_s": round(reconnect.online_at_s, 2),
        "catch_up_s": None if reconnect.catch_up_s is None else round(reconnect.catch_up_s, 2),
        "pending_at_reconnect": reconnect.pending_at_reconnect,
    }


@dataclass(frozen=True, slots=True)
class Hotspot:
    """Conflicts decided on one field of one entity type, and the entities that drew the most."""

    entity_type: str
    field: str
    conflicts: int
    top_entities: tuple[tuple[str, int], ...]

    @property
    def label(self) -> str:
        """`task.title`, or `task (delete vs edit)` for whole-entity decisions."""
        return (
            f"{self.entity_type} (delete vs edit)" if self.field == ALL_FIELDS else f"{self.entity_type}.{self.field}"
        )

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "entity_type": self.entity_type,
            "field": self.field,
            "label": self.label,
            "conflicts": self.conflicts,
            "top_entities": [{"entity_id": e, "conflicts": n} for e, n in self.top_entities],
        }


def hotspots(decisions: Iterable[tuple[str, str, str]], top: int = 3) -> list[Hotspot]:
    """From (entity type, entity id, field) per decision: fields by number of conflicts, most first."""
    by_field: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for entity_type, entity_id, field in decisions:
        by_field[(entity_type, field)][entity_id] += 1
    spots = [
        Hotspot(entity_type, field, sum(entities.values()), tuple(entities.most_common(top)))
        for (entity_type, field), entities in by_field.items()
    ]
    return sorted(spots, key=lambda h: (-h.conflicts, h.entity_type, h.field))


def contended_entities(decisions: Iterable[tuple[str, str, str]], top: int = 10) -> list[dict[str, Any]]:
    """From (tenant, entity type, entity id) per decision: the entities with the most decisions, most first."""
    counts = Counter(decisions)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    return [{"tenant_id": t, "entity_type": e, "entity_id": i, "conflicts": n} for (t, e, i), n in ranked]


def example_decisions(records: Sequence[DecisionRecord], count: int = 3) -> list[str]:
    """`count` decisions in words, as varied as the records allow (a delete-vs-edit first, then other fields)."""
    chosen: list[DecisionRecord] = []
    seen: set[tuple[str, str]] = set()
    ordered = sorted(records, key=lambda r: (r.decision.field != ALL_FIELDS, r.decided_at_ms, r.decision.decision_id))
    for record in ordered:
        kind = (record.decision.entity_type, record.decision.field)
        if kind not in seen:
            seen.add(kind)
            chosen.append(record)
        if len(chosen) == count:
            break
    for record in ordered:
        if len(chosen) == count:
            break
        if record not in chosen:
            chosen.append(record)
    return [describe(record) for record in chosen]
