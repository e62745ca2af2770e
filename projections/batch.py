"""A projection batch and its pure parts: dedup by (device_id, device_seq) and the merge of a batch.

A batch is what the consumer runtime hands a `ProjectionStore` to commit in one transaction: decoded events
(payload in the current version, changed fields explicit) with their log positions, the offset advance of
every partition it covers (compare-and-set), and rejections (dead-lettered records whose offsets it skips).
The store loads the touched entities, calls `merge_batch`, and writes the result; the in-memory store and
the PostgreSQL store share this code, so they cannot disagree on what a batch means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.chain_heads import ChainEntry
from projections.conflict_rules import ConflictRules, Decision, EntityState, WriteStamp, apply_event
from projections.decisions import decision_to_json
from projections.outbox import OutboxEntry, OutboxKind, event_body
from schemas.envelope import ChangeEvent

__all__ = [
    "BatchOutcome",
    "ConflictNote",
    "DedupSplit",
    "EntityKey",
    "MergedBatch",
    "OffsetAdvance",
    "ProjectionBatch",
    "Rejection",
    "SourcePosition",
    "SourcedEvent",
    "TopicPartition",
    "merge_batch",
    "rejection_entries",
    "split_by_dedup",
    "stamp_text",
]

EntityKey = tuple[str, str, str]  # (entity_type, tenant_id, entity_id)
DedupKey = tuple[str, int]  # (device_id, device_seq)


@dataclass(frozen=True, order=True, slots=True)
class TopicPartition:
    """One partition of one topic."""

    topic: str
    partition: int


@dataclass(frozen=True, order=True, slots=True)
class SourcePosition:
    """Where a record sits in the log."""

    topic: str
    partition: int
    offset: int

    @property
    def topic_partition(self) -> TopicPartition:
        """The partition of this position."""
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class SourcedEvent:
    """A decoded event in the current version, where it came from, and the cautions its migration raised."""

    event: ChangeEvent
    position: SourcePosition
    schema_id: int | None = None
    cautions: tuple[str, ...] = ()
    trace: str | None = None  # W3C traceparent of the record's processing, kept with its outbox rows
    chain: tuple[ChainEntry, ...] = ()  # signed devices: the verified links this record brings (chain_heads.py)

    @property
    def entity_key(self) -> EntityKey:
        """(entity type, tenant, entity id)."""
        return (self.event.entity_type, self.event.tenant_id, self.event.entity_id)


@dataclass(frozen=True, slots=True)
class OffsetAdvance:
    """Move a partition's stored offset from `expected` (None: no row yet) to `next_offset`, or be fenced."""

    partition: TopicPartition
    expected: int | None
    next_offset: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A dead-lettered record: its position, why, and who sent it when the envelope could be read."""

    position: SourcePosition
    error_class: str
    reason: str
    tenant_id: str | None = None
    device_id: str | None = None
    event_id: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProjectionBatch:
    """Everything one transaction commits."""

    group_id: str
    advances: tuple[OffsetAdvance, ...]
    events: tuple[SourcedEvent, ...] = ()
    rejections: tuple[Rejection, ...] = ()


@dataclass(frozen=True, slots=True)
class ConflictNote:
    """A decision a commit recorded for the first time, for metrics: where, by which rule, and since when."""

    entity_type: str
    field: str
    rule: str
    first_write_ms: int  # HLC physical time of the earlier write of the pair (the device's clock)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What a commit did; with `replayed` or `refused` set nothing was committed (dead-letter those, retry)."""

    committed: bool
    applied: int = 0
    duplicates: int = 0
    decisions: int = 0
    replayed: tuple[SourcedEvent, ...] = ()
    conflicts: tuple[ConflictNote, ...] = ()  # the new decisions among `decisions`
    refused: tuple[tuple[SourcedEvent, str], ...] = ()  # links contradicting the chain: dead-letter, then retry


@dataclass(frozen=True, slots=True)
class DedupSplit:
    """Events new to the dedup table, redeliveries (same event id) and replayed seqs (another event id)."""

    fresh: tuple[SourcedEvent, ...]
    duplicates: tuple[SourcedEvent, ...]
    replayed: tuple[SourcedEvent, ...]


def split_by_dedup(events: Iterable[SourcedEvent], known: Mapping[DedupKey, str]) -> DedupSplit:
    """Classify events against `known` (dedup key → event id) and against each other, in order."""
    seen: dict[DedupKey, str] = dict(known)
    fresh: list[SourcedEvent] = []
    duplicates: list[SourcedEvent] = []
    replayed: list[SourcedEvent] = []
    for sourced in events:
        key = sourced.event.dedup_key
        previous = seen.get(key)
        if previous is None:
            seen[key] = sourced.event.event_id
            fresh.append(sourced)
        elif previous == sourced.event.event_id:
            duplicates.append(sourced)
        else:
            replayed.append(sourced)
    return DedupSplit(tuple(fresh), tuple(duplicates), tuple(replayed))


def stamp_text(stamp: WriteStamp | None) -> str | None:
    """A row's winning clock as sortable text: physical.logical.rank.device."""
    if stamp is None:
        return None
    return f"{stamp.physical_ms:015d}.{stamp.logical:06d}.{stamp.rank}.{stamp.device_id}"


@dataclass
class MergedBatch:
    """New states of the touched entities, the decisions found and the outbox rows to write."""

    states: dict[EntityKey, EntityState] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    first_write_ms: dict[str, int] = field(default_factory=dict)  # decision id → earlier write of its pair

    def conflict_notes(self, decision_ids: Iterable[str] | None = None) -> tuple[ConflictNote, ...]:
        """Notes of the decisions (all, or those in `decision_ids`: the ones a store inserted for the first time)."""
        wanted = None if decision_ids is None else set(decision_ids)
        return tuple(
            ConflictNote(d.entity_type, d.field, d.rule, self.first_write_ms.get(d.decision_id, 0))
            for d in self.decisions
            if wanted is None or d.decision_id in wanted
        )


def _first_write_ms(before: EntityState | None, event: ChangeEvent, decision: Decision) -> int:
    """The HLC physical time of the earlier write of a decision's pair (the other one is in `before`'s history)."""
    earliest = event.hlc.physical_ms
    pair = {decision.winner_event_id, decision.loser_event_id} - {event.event_id}
    for record in before.history if before is not None else ():
        if record.event_id in pair:
            earliest = min(earliest, record.hlc.physical_ms)
    return earliest


def merge_batch(
    states: Mapping[EntityKey, EntityState | None],
    events: Sequence[SourcedEvent],
    rules: ConflictRules | None = None,
) -> MergedBatch:
    """Fold fresh events into the loaded states; decisions and outbox rows in a deterministic order."""
    current: MutableMapping[EntityKey, EntityState | None] = dict(states)
    merged = MergedBatch()
    decisions: dict[str, Decision] = {}
    for sourced in events:
        event = sourced.event
        before = current.get(sourced.entity_key)
        outcome = apply_event(before, event, rules)
        current[sourced.entity_key] = outcome.state
        merged.states[sourced.entity_key] = outcome.state
        merged.outbox.append(
            OutboxEntry(
                event.tenant_id,
                None,
                OutboxKind.CHANGE,
                event.entity_type,
                event.entity_id,
                event.event_id,
                event_body(event),
                sourced.trace,
            )
        )
        if sourced.cautions:
            merged.outbox.append(
                OutboxEntry(
                    event.tenant_id,
                    event.device_id,
                    OutboxKind.CAUTION,
                    event.entity_type,
                    event.entity_id,
                    event.event_id,
                    {"event_id": event.event_id, "cautions": list(sourced.cautions)},
                    sourced.trace,
                )
            )
        for decision in outcome.decisions:
            if decision.decision_id in decisions:
                continue
            decisions[decision.decision_id] = decision
            merged.first_write_ms[decision.decision_id] = _first_write_ms(before, event, decision)
            if decision.loser_device_id:
                merged.outbox.append(
                    OutboxEntry(
                        decision.tenant_id,
                        decision.loser_device_id,
                        OutboxKind.CONFLICT,
                        decision.entity_type,
                        decision.entity_id,
                        decision.loser_event_id,
                        decision_to_json(decision),
                        sourced.trace,
                    )
                )
    merged.decisions = sorted(decisions.values(), key=lambda d: d.decision_id)
    return merged


def rejection_entries(rejections: Iterable[Rejection]) -> list[OutboxEntry]:
    """Outbox rows telling devices their event was dead-lettered (when the envelope named the device)."""
    entries = []
    for rejection in rejections:
        if rejection.tenant_id is None or rejection.device_id is None:
            continue
        body: dict[str, Any] = {
            "event_id": rejection.event_id,
            "error_class": rejection.error_class,
            "reason": rejection.reason,
            "topic": rejection.position.topic,
            "partition": rejection.position.partition,
            "offset": rejection.position.offset,
        }
        entries.append(
            OutboxEntry(
                rejection.tenant_id,
                rejection.device_id,
                OutboxKind.REJECTED,
                rejection.entity_type,
                rejection.entity_id,
                rejection.event_id,
                body,
            )
        )
    return entries
