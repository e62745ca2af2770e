"""The projection-store port: offsets and batches committed atomically, and the read side, plus its fake.

`apply_batch` is the exactly-once step. In one transaction it advances every partition's stored offset by
compare-and-set (a stale, fenced consumer gets `FencedError` and nothing is written), drops redeliveries by
(device_id, device_seq), refuses replayed seqs (returned uncommitted, to be dead-lettered), merges the rest
into the entity states, and writes entity rows, decisions, outbox rows and dedup rows together.

The real adapter is `projections/pg_store_adapter.py`; `InMemoryProjectionStore` is the fake. Both pass
tests/projections/test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from keel.errors import FencedError, ServiceUnavailableError
from projections.batch import (
    BatchOutcome,
    EntityKey,
    ProjectionBatch,
    TopicPartition,
    merge_batch,
    rejection_entries,
    split_by_dedup,
)
from projections.chain_heads import InMemoryChainBook
from projections.conflict_rules import ConflictRules, Decision, EntityState
from projections.decisions import DecisionRecord, resolutions
from projections.entity_tables import entity_tables
from projections.outbox import InMemoryOutbox

__all__ = ["InMemoryProjectionStore", "ProjectionStore", "VisibleRow"]

VisibleRow = tuple[str, str, dict[str, Any]]  # (tenant_id, entity_id, visible payload values)


class ProjectionStore(Protocol):
    """Where projections live."""

    async def load_offsets(self, group_id: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Stored next offsets of the given partitions (absent: never committed)."""
        ...

    async def apply_batch(self, batch: ProjectionBatch) -> BatchOutcome:
        """Commit a batch atomically (see the module docstring); FencedError if an offset moved meanwhile."""
        ...

    async def entity_state(self, entity_type: str, tenant_id: str, entity_id: str) -> EntityState | None:
        """The merged state of one entity."""
        ...

    async def entity_states(
        self, entity_type: str, tenant_id: str, entity_ids: Sequence[str]
    ) -> dict[str, EntityState]:
        """The merged states of some entities of one tenant, in one read; ids without a state are left out."""
        ...

    async def visible_rows(self, entity_type: str, tenant_id: str | None = None) -> list[VisibleRow]:
        """Live entities of a type (optionally of one tenant) as payload values, for digests."""
        ...

    async def decisions(
        self, *, tenant_id: str | None = None, entity_id: str | None = None, limit: int = 100
    ) -> list[DecisionRecord]:
        """Recorded decisions, newest first."""
        ...

    async def decision(self, decision_id: str) -> DecisionRecord | None:
        """One decision by id (a unique prefix is enough)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@dataclass
class InMemoryProjectionStore:
    """A `ProjectionStore` in dicts, for unit tests; `available=False` simulates an outage."""

    rules: ConflictRules = field(default_factory=ConflictRules)
    offsets: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    applied: dict[tuple[str, int], str] = field(default_factory=dict)
    states: dict[EntityKey, EntityState] = field(default_factory=dict)
    decided: dict[str, tuple[Decision, int]] = field(default_factory=dict)
    outbox: InMemoryOutbox = field(default_factory=InMemoryOutbox)
    chains: InMemoryChainBook = field(default_factory=InMemoryChainBook)
    available: bool = True
    commits: int = 0

    def _raise_if_down(self) -> None:
        if not self.available:
            raise ServiceUnavailableError("postgresql", "in-memory store switched off")

    async def load_offsets(self, group_id: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Stored offsets."""
        await asyncio.sleep(0)
        self._raise_if_down()
        return {tp: self.offsets[(group_id, tp)] for tp in partitions if (group_id, tp) in self.offsets}

    async def apply_batch(self, batch: ProjectionBatch) -> BatchOutcome:
        """The same steps as the PostgreSQL store, on dicts."""
        await asyncio.sleep(0)
        self._raise_if_down()
        for advance in batch.advances:
            stored = self.offsets.get((batch.group_id, advance.partition))
            if stored != advance.expected:
                raise FencedError(
                    f"{advance.partition.topic}[{advance.partition.partition}] is at {stored}, "
                    f"not {advance.expected}: another consumer committed first"
                )
        split = split_by_dedup(batch.events, self.applied)
        if split.replayed:
            return BatchOutcome(committed=False, replayed=split.replayed)
        refused = self.chains.judge_and_record([(s, s.chain) for s in split.fresh if s.chain])
        if refused:
            return BatchOutcome(committed=False, refused=tuple(refused))
        touched = {sourced.entity_key for sourced in split.fresh}
        merged = merge_batch({key: self.states.get(key) for key in touched}, split.fresh, self.rules)
        for advance in batch.advances:
            self.offsets[(batch.group_id, advance.partition)] = advance.next_offset
        for sourced in split.fresh:
            self.applied[sourced.event.dedup_key] = sourced.event.event_id
        self.states.update(merged.states)
        now = time.time_ns() // 1_000_000
        inserted: list[str] = []
        for decision in merged.decisions:
            if decision.decision_id not in self.decided:
                self.decided[decision.decision_id] = (decision, now)
                inserted.append(decision.decision_id)
        self.outbox.append([*merged.outbox, *rejection_entries(batch.rejections)])
        self.commits += 1
        return BatchOutcome(
            committed=True,
            applied=len(split.fresh),
            duplicates=len(split.duplicates),
            decisions=len(inserted),
            conflicts=merged.conflict_notes(inserted),
        )

    async def entity_state(self, entity_type: str, tenant_id: str, entity_id: str) -> EntityState | None:
        """One state."""
        self._raise_if_down()
        return self.states.get((entity_type, tenant_id, entity_id))

    async def entity_states(
        self, entity_type: str, tenant_id: str, entity_ids: Sequence[str]
    ) -> dict[str, EntityState]:
        """Some states of one tenant."""
        self._raise_if_down()
        found = ((entity_id, self.states.get((entity_type, tenant_id, entity_id))) for entity_id in entity_ids)
        return {entity_id: state for entity_id, state in found if state is not None}

    async def visible_rows(self, entity_type: str, tenant_id: str | None = None) -> list[VisibleRow]:
        """Live entities as payload values."""
        self._raise_if_down()
        defaults = entity_tables()[entity_type].defaults()
        rows = []
        for (kind, tenant, entity_id), state in self.states.items():
            if kind != entity_type or (tenant_id is not None and tenant != tenant_id):
                continue
            visible = state.visible(defaults)
            if visible is not None:
                rows.append((tenant, entity_id, visible))
        return sorted(rows, key=lambda row: (row[0], row[1]))

    def _records(self) -> list[DecisionRecord]:
        settled = resolutions(decision for decision, _ in self.decided.values())
        return [
            DecisionRecord(decision, at, settled.get(decision.decision_id)) for decision, at in self.decided.values()
        ]

    async def decisions(
        self, *, tenant_id: str | None = None, entity_id: str | None = None, limit: int = 100
    ) -> list[DecisionRecord]:
        """Decisions, newest first."""
        self._raise_if_down()
        records = [
            r
            for r in self._records()
            if (tenant_id is None or r.decision.tenant_id == tenant_id)
            and (entity_id is None or r.decision.entity_id == entity_id)
        ]
        return sorted(records, key=lambda r: (-r.decided_at_ms, r.decision.decision_id))[:limit]

    async def decision(self, decision_id: str) -> DecisionRecord | None:
        """One decision by id or unique prefix."""
        self._raise_if_down()
        matches = [r for r in self._records() if r.decision.decision_id.startswith(decision_id)]
        return matches[0] if len(matches) == 1 else None

    async def close(self) -> None:
        """Nothing to release."""
