"""Recorded conflict decisions: JSON form, resolution status and the words `keel conflicts show` prints."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from projections.conflict_rules import ALL_FIELDS, Decision

__all__ = ["DecisionRecord", "decision_from_json", "decision_to_json", "describe", "resolutions"]

MANUAL_OVERRIDE = "manual-override"

_FIELDS = (
    "decision_id",
    "tenant_id",
    "entity_type",
    "entity_id",
    "field",
    "rule",
    "winner_event_id",
    "winner_device_id",
    "winner_value",
    "loser_event_id",
    "loser_device_id",
    "loser_value",
    "explanation",
)


def decision_to_json(decision: Decision) -> dict[str, Any]:
    """Every field of a decision as JSON (the conflict notice a losing device receives)."""
    return {name: getattr(decision, name) for name in _FIELDS}


def decision_from_json(raw: Mapping[str, Any]) -> Decision:
    """Inverse of `decision_to_json`."""
    return Decision(**{name: raw[name] for name in _FIELDS})


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A stored decision, when it was taken, and the override event that settled it (if any)."""

    decision: Decision
    decided_at_ms: int
    resolved_by: str | None = None

    @property
    def is_open(self) -> bool:
        """An automatic decision nobody has confirmed or reversed by hand yet."""
        return self.decision.rule != MANUAL_OVERRIDE and self.resolved_by is None


def resolutions(decisions: Iterable[Decision]) -> dict[str, str]:
    """Decision id → event id of the override that settled it, from the manual-override decisions present.

    An override supersedes the event whose value it discards; a decision is settled by any override on the
    same entity and field (or the whole entity) that supersedes its winner or its loser. Order-free, so
    replays and rebuilds agree on it.
    """
    listed = list(decisions)
    overrides = [d for d in listed if d.rule == MANUAL_OVERRIDE]
    settled: dict[str, str] = {}
    for decision in listed:
        if decision.rule == MANUAL_OVERRIDE:
            continue
        for override in overrides:
            same_entity = (override.tenant_id, override.entity_type, override.entity_id) == (
                decision.tenant_id,
                decision.entity_type,
                decision.entity_id,
            )
            same_field = ALL_FIELDS in (override.field, decision.field) or override.field == decision.field
            touches = override.loser_event_id in (decision.winner_event_id, decision.loser_event_id)
            if same_entity and same_field and touches:
                settled[decision.decision_id] = override.winner_event_id
                break
    return settled


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def describe(record: DecisionRecord) -> str:
    """The decision in words, for people: what conflicted, what was kept, why, and what to do about it."""
    d = record.decision
    moment = datetime.fromtimestamp(record.decided_at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    what = "the whole entity" if d.field == ALL_FIELDS else f"field {d.field!r}"
    lines = [
        f"Decision {d.decision_id} ({d.rule}), recorded {moment}",
        f"  {d.entity_type} {d.entity_id} of tenant {d.tenant_id}: {what}",
    ]
    if d.rule == MANUAL_OVERRIDE:
        lines.append(f"  Override {d.winner_event_id} replaced event {d.loser_event_id}")
        if d.field != ALL_FIELDS:
            lines.append(f"  Value set: {_value(d.winner_value)}")
    elif d.field == ALL_FIELDS:
        lines.append(f"  Kept:      event {d.winner_event_id} from {d.winner_device_id}")
        lines.append(f"  Discarded: event {d.loser_event_id} from {d.loser_device_id}")
    else:
        lines.append(f"  Kept:      {_value(d.winner_value)} from {d.winner_device_id} (event {d.winner_event_id})")
        lines.append(f"  Discarded: {_value(d.loser_value)} from {d.loser_device_id} (event {d.loser_event_id})")
    lines.append(f"  Why: {d.explanation}.")
    if record.resolved_by is not None:
        lines.append(f"  Status: settled by override {record.resolved_by}.")
    elif d.rule != MANUAL_OVERRIDE:
        lines.append(
            f"  Status: open. To reverse it: keel conflicts resolve {d.decision_id} --keep loser "
            "--reason '…' --actor <you>"
        )
    return "\n".join(lines)
