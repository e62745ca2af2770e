"""Test helpers: build change events and write them framed to a log with the shared encoder."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from keel.event_log import LogWriter, OutgoingRecord
from keel.hlc import HlcTimestamp
from keel.settings import Settings
from schemas.envelope import ChangeEvent, Op
from schemas.event_encoder import EventEncoder
from schemas.registry import SchemaRegistry

TASK_FIELDS_V3 = ("title", "description", "due", "due_at", "status", "project_id", "priority", "labels")


@dataclass
class EventFactory:
    """Deterministic change events: per-device sequences, HLCs from a counter, seeded event ids."""

    seed: int = 0
    tenant_id: str = "tenant-a"
    clock_ms: int = 1_750_000_000_000
    device_prefix: str = "dev"
    seqs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def next_seq(self, device: str) -> int:
        self.seqs[device] = self.seqs.get(device, 0) + 1
        return self.seqs[device]

    def event(
        self,
        device: str,
        entity_id: str,
        *,
        entity_type: str = "task",
        op: Op = Op.UPSERT,
        version: int = 3,
        physical_ms: int | None = None,
        base_ms: int | None = None,
        tenant_id: str | None = None,
        seq: int | None = None,
        **payload: Any,
    ) -> ChangeEvent:
        self.clock_ms += 1
        physical = self.clock_ms if physical_ms is None else physical_ms
        return ChangeEvent(
            event_id=self._event_id(),
            tenant_id=tenant_id or self.tenant_id,
            device_id=device,
            device_seq=self.next_seq(device) if seq is None else seq,
            entity_type=entity_type,
            entity_id=entity_id,
            op=op,
            hlc=HlcTimestamp(physical, 0, device),
            schema_version=version,
            payload=None if op is Op.DELETE else dict(payload),
            changed_fields=tuple(payload) if op is not Op.DELETE else (),
            base_hlc=HlcTimestamp(base_ms, 0, "seen") if base_ms is not None else None,
        )

    def random_task_events(self, count: int, *, devices: int = 4, entities: int = 20) -> list[ChangeEvent]:
        """A mix of creates, concurrent edits and deletes over a few entities."""
        events = []
        for _ in range(count):
            device = f"{self.device_prefix}-{self._rng.randrange(devices)}"
            entity = f"task-{self._rng.randrange(entities)}"
            roll = self._rng.random()
            if roll < 0.08:
                events.append(self.event(device, entity, op=Op.DELETE))
                continue
            fields: dict[str, Any] = {"title": f"t{self._rng.randrange(1000)}"}
            if roll < 0.5:
                fields["priority"] = self._rng.randrange(4)
            if roll < 0.3:
                fields["labels"] = [f"l{self._rng.randrange(5)}"]
            if roll < 0.2:
                fields["due_at"] = 1_760_000_000_000 + self._rng.randrange(10**9)
            # Most writers have seen the latest state; some edit offline (no base) or from a stale view.
            chance = self._rng.random()
            stale = self.clock_ms - self._rng.randrange(1, 30)
            base = self.clock_ms if chance < 0.8 else (None if chance < 0.9 else stale)
            events.append(self.event(device, entity, base_ms=base, **fields))
        return events


def encoder_for(settings: Settings, registry: SchemaRegistry) -> EventEncoder:
    return EventEncoder(registry, settings.topic_for, auto_register=True)


async def write_events(
    writer: LogWriter, encoder: EventEncoder, events: Sequence[ChangeEvent], *, partition_key: str | None = None
) -> None:
    """Encode and append events (keyed by entity id unless a key is forced)."""
    records: list[OutgoingRecord] = []
    for event in events:
        record = await encoder.record(event)
        if partition_key is not None:
            record = OutgoingRecord(record.topic, partition_key.encode(), record.value, record.headers)
        records.append(record)
    for start in range(0, len(records), 500):
        await writer.write(records[start : start + 500])


def in_current_version(event: ChangeEvent) -> ChangeEvent:
    """The event as the projector sees it after migration (for pure in-memory expectations)."""
    from schemas.domain_migrations import build_registry

    migrated = build_registry(disabled=()).migrate(
        event.entity_type, event.payload, event.changed_fields, from_version=event.schema_version
    )
    return event.with_payload(migrated.payload, migrated.changed_fields, migrated.version)


def expected_digests(events: Sequence[ChangeEvent], entity_type: str = "task") -> dict[str, tuple[int, str]]:
    """Tenant → (live entities, digest) of a pure in-memory merge of `events` (one entity type)."""
    from projections.conflict_rules import merge_events
    from projections.digest import digests_by_tenant
    from projections.entity_tables import entity_tables

    defaults = entity_tables()[entity_type].defaults()
    grouped: dict[tuple[str, str], list[ChangeEvent]] = {}
    for event in events:
        if event.entity_type == entity_type:
            grouped.setdefault((event.tenant_id, event.entity_id), []).append(in_current_version(event))
    rows = []
    for (tenant, entity_id), items in grouped.items():
        visible = merge_events(items).state.visible(defaults)
        if visible is not None:
            rows.append((tenant, entity_id, visible))
    return digests_by_tenant(rows)


def expected_decision_ids(events: Sequence[ChangeEvent]) -> set[str]:
    """Decision ids of a pure in-memory merge."""
    from projections.conflict_rules import merge_events

    grouped: dict[tuple[str, str, str], list[ChangeEvent]] = {}
    for event in events:
        grouped.setdefault((event.entity_type, event.tenant_id, event.entity_id), []).append(in_current_version(event))
    return {d.decision_id for items in grouped.values() for d in merge_events(items).decisions}


async def until(condition: Callable[[], Awaitable[bool] | bool], timeout_s: float = 60.0, what: str = "") -> None:
    """Poll `condition` (sync or async) until it holds; fail after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for _ in itertools.count():
        outcome = condition()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return
        assert loop.time() < deadline, f"not reached within {timeout_s}s: {what or condition}"
        await asyncio.sleep(0.05)
