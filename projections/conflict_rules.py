"""Conflict resolution: a pure, deterministic merge of change events into entity state.

The state of an entity is a join-semilattice, so the result never depends on delivery order:
- every field is a register holding the value of the write with the greatest `WriteStamp`
  (HLC physical ms, HLC logical, rank — overrides outrank ordinary writes at the same clock —, device id,
  event id); merging takes the maximum, which is commutative, associative and idempotent;
- DELETE is a tombstone clock: the entity is visible only if some field was written after the newest
  delete, and fields written before that delete read as their defaults (delete, then re-create);
- OVERRIDE (a manual resolution) is written like an edit with rank 1: it beats every ordinary write at or
  below its clock, and any later edit — made by someone who has seen it — beats it in turn, so a resolved
  conflict stays resolved and never oscillates.

Decisions are explanations, also a pure function of the set of events: two writes to one field conflict
when neither writer had seen the other (`base_hlc` below the other's clock) and they set different
values; the pair's decision names the winner, the loser, the rule and a sentence a user understands.
Overrides produce "manual-override" decisions against the events they supersede.

Per-entity, per-field rules are pluggable (`FieldRule`): each must be a semilattice join; the tests check
the laws for every registered rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from keel.hlc import HlcTimestamp
from schemas.envelope import ChangeEvent, Op

__all__ = [
    "HISTORY_LIMIT",
    "ConflictRules",
    "Decision",
    "EntityState",
    "FieldRule",
    "FieldState",
    "LastWriterWins",
    "MergeOutcome",
    "WriteRecord",
    "WriteStamp",
    "apply_event",
    "merge_events",
]

# Writes remembered per entity for conflict detection; the merged state itself needs no history.
HISTORY_LIMIT = 128
ALL_FIELDS = "*"


@dataclass(frozen=True, slots=True, order=True)
class WriteStamp:
    """Total order of writes: (physical ms, logical, rank, device id, event id); rank 1 = manual override."""

    physical_ms: int
    logical: int
    rank: int
    device_id: str
    event_id: str

    @classmethod
    def of(cls, event: ChangeEvent) -> WriteStamp:
        """The stamp of an event."""
        rank = 1 if event.op is Op.OVERRIDE else 0
        return cls(event.hlc.physical_ms, event.hlc.logical, rank, event.device_id, event.event_id)

    def describe(self) -> str:
        """Human form: 2025-07-15T10:00:00.123Z #2."""
        moment = datetime.fromtimestamp(self.physical_ms / 1000, tz=UTC)
        return f"{moment.strftime('%Y-%m-%dT%H:%M:%S.')}{moment.microsecond // 1000:03d}Z #{self.logical}"

    def as_list(self) -> list[Any]:
        """Compact JSON form."""
        return [self.physical_ms, self.logical, self.rank, self.device_id, self.event_id]

    @classmethod
    def from_list(cls, raw: list[Any]) -> WriteStamp:
        """Inverse of `as_list`."""
        return cls(int(raw[0]), int(raw[1]), int(raw[2]), str(raw[3]), str(raw[4]))


@dataclass(frozen=True, slots=True)
class FieldState:
    """A field's value and the stamp of the write that set it."""

    value: Any
    stamp: WriteStamp


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """What conflict detection remembers of one write."""

    event_id: str
    device_id: str
    op: Op
    hlc: HlcTimestamp
    base_hlc: HlcTimestamp | None
    stamp: WriteStamp
    values: Mapping[str, Any]
    supersedes: tuple[str, ...] = ()
    actor: str = ""
    reason: str = ""

    def has_seen(self, other: WriteRecord) -> bool:
        """Whether this write's author had seen `other` when writing (causal knowledge via base_hlc)."""
        return self.base_hlc is not None and self.base_hlc >= other.hlc

    def is_concurrent_with(self, other: WriteRecord) -> bool:
        """Neither author had seen the other's write."""
        return self.device_id != other.device_id and not self.has_seen(other) and not other.has_seen(self)


@dataclass(frozen=True, slots=True)
class Decision:
    """An explained conflict: which write won on which field, by which rule, in a sentence."""

    decision_id: str
    tenant_id: str
    entity_type: str
    entity_id: str
    field: str
    rule: str
    winner_event_id: str
    winner_device_id: str
    winner_value: Any
    loser_event_id: str
    loser_device_id: str
    loser_value: Any
    explanation: str

    @staticmethod
    def make_id(entity_type: str, entity_id: str, field_name: str, winner: str, loser: str) -> str:
        """Deterministic id, so the same conflict found twice (replay, redelivery) is one decision."""
        digest = hashlib.sha256(f"{entity_type}\0{entity_id}\0{field_name}\0{winner}\0{loser}".encode())
        return digest.hexdigest()[:24]


class FieldRule(Protocol):
    """How one field resolves concurrent writes; `join` must be commutative, associative and idempotent."""

    name: str

    def join(self, current: FieldState, incoming: FieldState) -> FieldState:
        """The merged field state."""
        ...

    def explain(self, winner: WriteRecord, loser: WriteRecord) -> str:
        """A sentence a user understands."""
        ...


class LastWriterWins:
    """The default rule: the write with the greater stamp wins."""

    name = "last-writer-wins"

    def join(self, current: FieldState, incoming: FieldState) -> FieldState:
        """Keep the greater stamp."""
        return incoming if incoming.stamp > current.stamp else current

    def explain(self, winner: WriteRecord, loser: WriteRecord) -> str:
        """'kept the later edit: clock … > …; tie broken by device id' as applicable."""
        w, lo = winner.stamp, loser.stamp
        if (w.physical_ms, w.logical) == (lo.physical_ms, lo.logical):
            if w.rank != lo.rank:
                return (
                    f"kept the operator's override over the edit from {loser.device_id}: both at clock "
                    f"{w.describe()}, and overrides outrank edits"
                )
            return (
                f"kept the edit from {winner.device_id} over {loser.device_id}'s: both at clock {w.describe()}; "
                f"tie broken by device id ({winner.device_id} > {loser.device_id})"
            )
        return (
            f"kept the later edit from {winner.device_id} (clock {w.describe()}) over the edit from "
            f"{loser.device_id} (clock {lo.describe()}), made without seeing each other"
        )


@dataclass
class ConflictRules:
    """Field rules per entity type; fields without an entry use last-writer-wins."""

    rules: dict[tuple[str, str], FieldRule] = field(default_factory=dict)
    default: FieldRule = field(default_factory=LastWriterWins)

    def rule_for(self, entity_type: str, field_name: str) -> FieldRule:
        """The rule of one field."""
        return self.rules.get((entity_type, field_name), self.default)

    def register(self, entity_type: str, field_name: str, rule: FieldRule) -> None:
        """Use `rule` for one field of one entity type."""
        self.rules[(entity_type, field_name)] = rule


@dataclass(frozen=True, slots=True)
class EntityState:
    """Merged state of one entity: field registers, newest tombstone, recent writes."""

    tenant_id: str
    entity_type: str
    entity_id: str
    fields: Mapping[str, FieldState] = field(default_factory=dict)
    deleted: WriteStamp | None = None
    history: tuple[WriteRecord, ...] = ()

    @property
    def is_alive(self) -> bool:
        """Visible: some field was written after the newest delete (or there is no delete)."""
        if not self.fields:
            return False
        newest = max(state.stamp for state in self.fields.values())
        return self.deleted is None or newest > self.deleted

    @property
    def newest_stamp(self) -> WriteStamp | None:
        """The greatest stamp of any write or delete."""
        stamps = [state.stamp for state in self.fields.values()]
        if self.deleted is not None:
            stamps.append(self.deleted)
        return max(stamps) if stamps else None

    @property
    def newest_hlc(self) -> HlcTimestamp | None:
        """The newest clock among remembered writes (what a writer's base_hlc should be)."""
        return max((record.hlc for record in self.history), default=None)

    def visible(self, defaults: Mapping[str, Any]) -> dict[str, Any] | None:
        """Field values as users see them (defaults for never-written or pre-delete fields); None if deleted."""
        if not self.is_alive:
            return None
        values = dict(defaults)
        for name, state in self.fields.items():
            if self.deleted is None or state.stamp > self.deleted:
                values[name] = state.value
        return values

    def has_applied(self, event_id: str) -> bool:
        """Whether a remembered write has this event id."""
        return any(record.event_id == event_id for record in self.history)


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """A new state and the decisions the event caused."""

    state: EntityState
    decisions: tuple[Decision, ...]


def _record_of(event: ChangeEvent) -> WriteRecord:
    values: Mapping[str, Any] = {}
    if event.payload is not None:
        values = {name: event.payload.get(name) for name in event.changed_fields}
    override = event.override
    return WriteRecord(
        event_id=event.event_id,
        device_id=event.device_id,
        op=event.op,
        hlc=event.hlc,
        base_hlc=event.base_hlc,
        stamp=WriteStamp.of(event),
        values=values,
        supersedes=override.supersedes if override else (),
        actor=override.actor if override else "",
        reason=override.reason if override else "",
    )


def _is_delete(record: WriteRecord) -> bool:
    return record.op is Op.DELETE or (record.op is Op.OVERRIDE and not record.values)


def _pair_decisions(
    state: EntityState, incoming: WriteRecord, earlier: WriteRecord, rules: ConflictRules
) -> list[Decision]:
    winner, loser = (incoming, earlier) if incoming.stamp > earlier.stamp else (earlier, incoming)
    decisions = []

    def decide(field_name: str, rule: str, explanation: str) -> None:
        decisions.append(
            Decision(
                decision_id=Decision.make_id(
                    state.entity_type, state.entity_id, field_name, winner.event_id, loser.event_id
                ),
                tenant_id=state.tenant_id,
                entity_type=state.entity_type,
                entity_id=state.entity_id,
                field=field_name,
                rule=rule,
                winner_event_id=winner.event_id,
                winner_device_id=winner.device_id,
                winner_value=winner.values.get(field_name) if field_name != ALL_FIELDS else None,
                loser_event_id=loser.event_id,
                loser_device_id=loser.device_id,
                loser_value=loser.values.get(field_name) if field_name != ALL_FIELDS else None,
                explanation=explanation,
            )
        )

    if _is_delete(winner) and not _is_delete(loser):
        decide(
            ALL_FIELDS,
            "delete-wins",
            f"kept the deletion by {winner.device_id} (clock {winner.stamp.describe()}): it is later than the "
            f"concurrent edit by {loser.device_id} (clock {loser.stamp.describe()})",
        )
    elif _is_delete(loser) and not _is_delete(winner):
        decide(
            ALL_FIELDS,
            "edit-restores",
            f"the edit by {winner.device_id} (clock {winner.stamp.describe()}) restored the entity: it is later "
            f"than the concurrent deletion by {loser.device_id} (clock {loser.stamp.describe()})",
        )
    else:
        for field_name in sorted(set(winner.values) & set(loser.values)):
            if winner.values[field_name] == loser.values[field_name]:
                continue
            rule = rules.rule_for(state.entity_type, field_name)
            decide(field_name, rule.name, rule.explain(winner, loser))
    return decisions


def _override_decisions(state: EntityState, record: WriteRecord) -> list[Decision]:
    decisions = []
    for superseded in record.supersedes:
        fields = sorted(record.values) or [ALL_FIELDS]
        for field_name in fields:
            decisions.append(
                Decision(
                    decision_id=Decision.make_id(
                        state.entity_type, state.entity_id, field_name, record.event_id, superseded
                    ),
                    tenant_id=state.tenant_id,
                    entity_type=state.entity_type,
                    entity_id=state.entity_id,
                    field=field_name,
                    rule="manual-override",
                    winner_event_id=record.event_id,
                    winner_device_id=record.device_id,
                    winner_value=record.values.get(field_name),
                    loser_event_id=superseded,
                    loser_device_id="",
                    loser_value=None,
                    explanation=(
                        f"{record.actor or 'an operator'} resolved this by hand"
                        + (f": {record.reason}" if record.reason else "")
                        + f" (override at clock {record.stamp.describe()})"
                    ),
                )
            )
    return decisions


def apply_event(state: EntityState | None, event: ChangeEvent, rules: ConflictRules | None = None) -> MergeOutcome:
    """Merge one event (payload already in the current version, changed_fields explicit) into `state`."""
    rules = rules or ConflictRules()
    if state is None:
        state = EntityState(event.tenant_id, event.entity_type, event.entity_id)
    if state.has_applied(event.event_id):
        return MergeOutcome(state, ())
    record = _record_of(event)
    decisions: list[Decision] = []
    for earlier in state.history:
        if record.is_concurrent_with(earlier):
            decisions.extend(_pair_decisions(state, record, earlier, rules))
    if event.op is Op.OVERRIDE:
        decisions.extend(_override_decisions(state, record))

    fields = dict(state.fields)
    deleted = state.deleted
    if _is_delete(record):
        deleted = record.stamp if deleted is None or record.stamp > deleted else deleted
    else:
        for name, value in record.values.items():
            incoming = FieldState(value, record.stamp)
            current = fields.get(name)
            rule = rules.rule_for(state.entity_type, name)
            fields[name] = incoming if current is None else rule.join(current, incoming)
    history = sorted((*state.history, record), key=lambda r: r.stamp)[-HISTORY_LIMIT:]
    new_state = replace(state, fields=fields, deleted=deleted, history=tuple(history))
    return MergeOutcome(new_state, tuple(sorted(decisions, key=lambda d: d.decision_id)))


def merge_events(
    events: Iterable[ChangeEvent], rules: ConflictRules | None = None, state: EntityState | None = None
) -> MergeOutcome:
    """Fold events of one entity into a state; decisions deduplicated by id."""
    decisions: dict[str, Decision] = {}
    for event in events:
        outcome = apply_event(state, event, rules)
        state = outcome.state
        decisions.update((d.decision_id, d) for d in outcome.decisions)
    if state is None:
        raise ValueError("merge_events needs at least one event or an initial state")
    return MergeOutcome(state, tuple(sorted(decisions.values(), key=lambda d: d.decision_id)))
