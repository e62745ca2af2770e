"""A synthetic stream of change events written straight to the change topics, and what the log acknowledged.

The projector scenarios (R1, R3, R4, R5, the drill) need tens of thousands of events to flow faster than
devices could push them, so they play the gateway's part: `SyntheticWorkload` draws events as a fleet
would write them (per-device seqs without gaps, hybrid clocks, concurrent edits of shared entities,
deletes, task v2 next to v3 so the projector migrates), and `LogProducer` encodes them with the registry
(Confluent framing, like the gateway) and appends them with acks=all, many per batch. An op counts as
acknowledged once the broker acknowledged its record — exactly what the gateway promises a device.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploy.verification.checker import AckedOp, op_fingerprint
from keel.event_log import LogWriter, OutgoingRecord
from keel.hlc import HlcTimestamp
from schemas.envelope import ChangeEvent, Op
from schemas.event_encoder import EventEncoder

__all__ = ["LogProducer", "SyntheticWorkload"]

BASE_CLOCK_MS = 1_767_225_600_000  # 2026-01-01: far from any device's real clock, the same for every seed
STATUSES = ("TODO", "DOING", "DONE")
COLORS = ("#2563eb", "#16a34a", "#d97706", None)


@dataclass
class SyntheticWorkload:
    """Seeded change events of a few tenants' devices over a bounded set of entities."""

    seed: int
    tenants: int = 4
    devices_per_tenant: int = 8
    entities_per_tenant: int = 400
    conflict_share: float = 0.05  # writes made from a stale view or offline
    legacy_share: float = 0.09  # task writes of an older build (v2), which the projector migrates
    device_prefix: str = "dev"
    seqs: dict[str, int] = field(default_factory=dict)
    clocks: dict[str, int] = field(default_factory=dict)  # device → its last HLC physical ms

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._now = BASE_CLOCK_MS

    @property
    def devices(self) -> list[tuple[str, str]]:
        """Every (tenant, device) pair the workload writes as."""
        return [
            (f"tenant-{t}", f"{self.device_prefix}-{t}-{d}")
            for t in range(self.tenants)
            for d in range(self.devices_per_tenant)
        ]

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _stamp(self, device: str) -> HlcTimestamp:
        # Every device's clock moves forward with the fleet's; a few ms of jitter makes concurrent writes.
        self._now += 1
        physical = max(self.clocks.get(device, 0) + 1, self._now + self.rng.randrange(-40, 40))
        self.clocks[device] = physical
        return HlcTimestamp(physical, 0, device)

    def _base(self, stamp: HlcTimestamp) -> HlcTimestamp | None:
        # Most writers had seen everything written so far; a few edit offline (no base) or from a stale view,
        # which makes their writes concurrent with recent ones: the conflicts the projector must decide.
        roll = self.rng.random()
        if roll < self.conflict_share:
            stale = stamp.physical_ms - self.rng.randrange(50, 500)
            return None if roll < self.conflict_share / 2 else HlcTimestamp(stale, 0, "seen")
        return HlcTimestamp(max(self._now + 40, stamp.physical_ms), 0, "seen")

    def next_event(self) -> ChangeEvent:
        """One more event of a random device."""
        tenant, device = self.rng.choice(self.devices)
        self.seqs[device] = seq = self.seqs.get(device, 0) + 1
        stamp = self._stamp(device)
        roll = self.rng.random()
        common: dict[str, Any] = {
            "event_id": self._event_id(),
            "tenant_id": tenant,
            "device_id": device,
            "device_seq": seq,
            "hlc": stamp,
            "base_hlc": self._base(stamp),
        }
        if roll < 0.05:
            project = f"project-{self.rng.randrange(max(1, self.entities_per_tenant // 20))}"
            payload = {"name": f"project {self.rng.randrange(100)}", "color": self.rng.choice(COLORS)}
            return ChangeEvent(
                entity_type="project", entity_id=project, op=Op.UPSERT, schema_version=1,
                payload=payload, changed_fields=tuple(payload), **common,
            )  # fmt: skip
        entity = f"task-{self.rng.randrange(self.entities_per_tenant)}"
        if roll < 0.11:
            return ChangeEvent(entity_type="task", entity_id=entity, op=Op.DELETE, schema_version=3, **common)
        fields: dict[str, Any] = {"title": f"task {self.rng.randrange(10_000)}"}
        if self.rng.random() < 0.5:
            fields["priority"] = self.rng.randrange(4)
        if self.rng.random() < 0.3:
            fields["status"] = self.rng.choice(STATUSES)
        if roll < 0.11 + self.legacy_share:  # an older build: task v2 (free-text due date), migrated to v3
            if self.rng.random() < 0.5:
                fields["due"] = "2026-07-01"
            return ChangeEvent(
                entity_type="task", entity_id=entity, op=Op.UPSERT, schema_version=2,
                payload=fields, changed_fields=tuple(fields), **common,
            )  # fmt: skip
        if self.rng.random() < 0.25:
            fields["labels"] = sorted({f"l{self.rng.randrange(6)}" for _ in range(self.rng.randrange(1, 3))})
        if self.rng.random() < 0.2:
            fields["due_at"] = BASE_CLOCK_MS + self.rng.randrange(10**10)
        return ChangeEvent(
            entity_type="task", entity_id=entity, op=Op.UPSERT, schema_version=3,
            payload=fields, changed_fields=tuple(fields), **common,
        )  # fmt: skip

    def events(self, count: int) -> Iterator[ChangeEvent]:
        """The next `count` events."""
        for _ in range(count):
            yield self.next_event()


@dataclass
class LogProducer:
    """Encodes events with the registry and appends them (acks=all); remembers what was acknowledged."""

    writer: LogWriter
    encoder: EventEncoder
    batch: int = 2_000
    acknowledged: list[AckedOp] = field(default_factory=list)
    records: int = 0

    async def encode(self, events: Sequence[ChangeEvent]) -> list[OutgoingRecord]:
        """Log records of events (their entity's topic, keyed by entity id)."""
        return [await self.encoder.record(event) for event in events]

    async def write(self, events: Sequence[ChangeEvent], records: Sequence[OutgoingRecord] | None = None) -> None:
        """Append events (encoded now unless `records` are given), `batch` at a time; each counts once acked."""
        encoded = list(records) if records is not None else await self.encode(events)
        for start in range(0, len(encoded), self.batch):
            await self.writer.write(encoded[start : start + self.batch])
            for event in events[start : start + self.batch]:
                self.acknowledged.append(
                    AckedOp(event.device_id, event.device_seq, event.event_id, op_fingerprint(event))
                )
            self.records += len(encoded[start : start + self.batch])

    async def write_copies(self, records: Sequence[OutgoingRecord]) -> None:
        """Append records again (a producer retry after a lost ack: the log holds a second copy)."""
        for start in range(0, len(records), self.batch):
            await self.writer.write(records[start : start + self.batch])
        self.records += len(records)
