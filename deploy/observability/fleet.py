"""What the probes read, as plain data: the shapes the dashboard serves as JSON and `keel doctor` judges.

Pure: no I/O. `lag_of` joins the log's end offsets with the consumer's positions (the group's committed
offsets in Kafka, or the offsets the projector stored in PostgreSQL — whichever is further, since the Kafka
commit follows the PostgreSQL one and may be skipped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Backlog",
    "BrokerProtocol",
    "DeadLetters",
    "FieldHotspot",
    "GroupState",
    "HistoryPoint",
    "Hotspot",
    "KafkaView",
    "PartitionLag",
    "PgView",
    "Snapshot",
    "StoredOffset",
    "VersionShare",
    "lag_of",
]

Partition = tuple[str, int]


@dataclass(frozen=True)
class PartitionLag:
    """One partition: where the log ends and starts, where the consumer stands, and the difference."""

    topic: str
    partition: int
    end: int
    start: int
    position: int | None  # None: the consumer has never committed this partition
    lag: int


@dataclass(frozen=True)
class GroupState:
    """A consumer group as the broker describes it."""

    group: str
    state: str  # Stable, Empty, Dead, PreparingRebalance, …
    members: int


@dataclass(frozen=True)
class BrokerProtocol:
    """What the brokers speak (Kafka reports no release number; its API versions stand in for it)."""

    brokers: int
    apis: int
    versions: dict[str, tuple[int, int]]  # API name → (min, max) version

    def describe(self) -> str:
        """E.g. 'Produce v0-13, Fetch v4-18; 73 APIs on 1 broker'."""
        shown = ", ".join(f"{name} v{low}-{high}" for name, (low, high) in sorted(self.versions.items()))
        return f"{shown}; {self.apis} APIs on {self.brokers} broker{'s' if self.brokers != 1 else ''}"


@dataclass(frozen=True)
class DeadLetters:
    """The dead-letter topic: records held, records newer than the window, error classes of the newest."""

    topic: str
    records: int
    recent: int
    window_s: float
    by_reason: dict[str, int] = field(default_factory=dict)
    end_offsets: dict[int, int] = field(default_factory=dict)


@dataclass
class KafkaView:
    """Everything read from Kafka in one pass (error set when Kafka could not be read)."""

    partitions: list[PartitionLag] = field(default_factory=list)
    group: GroupState | None = None
    dead_letters: DeadLetters | None = None
    protocol: BrokerProtocol | None = None
    missing_topics: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def total_lag(self) -> int:
        """Records waiting over every partition."""
        return sum(p.lag for p in self.partitions)

    @property
    def end_total(self) -> int:
        """Sum of end offsets: everything ever written to the change topics."""
        return sum(p.end for p in self.partitions)

    @property
    def position_total(self) -> int:
        """Sum of consumer positions: everything the projector has committed."""
        return sum(p.position or 0 for p in self.partitions)


@dataclass(frozen=True)
class StoredOffset:
    """An offset the projector stored in PostgreSQL and how long ago it moved."""

    topic: str
    partition: int
    next_offset: int
    age_s: float


@dataclass(frozen=True)
class Hotspot:
    """An entity with many conflict decisions."""

    entity_type: str
    entity_id: str
    conflicts: int


@dataclass(frozen=True)
class FieldHotspot:
    """A field (of an entity type) with many conflict decisions."""

    entity_type: str
    field: str
    conflicts: int


@dataclass(frozen=True)
class VersionShare:
    """How many devices agreed on one version of one entity type at their last handshake."""

    entity_type: str
    version: int
    devices: int
    deprecated: bool  # below the entity's stable version: still accepted, on its way out


@dataclass(frozen=True)
class Backlog:
    """Outbox entries a device has not acknowledged yet (capped)."""

    tenant_id: str
    device_id: str
    entries: int


@dataclass
class PgView:
    """Everything read from PostgreSQL in one pass (error set when it could not be read)."""

    server_version: str | None = None
    schema_exists: bool = False
    pending_migrations: list[str] = field(default_factory=list)
    stored_offsets: list[StoredOffset] = field(default_factory=list)
    applied_timeline: list[tuple[int, int]] = field(default_factory=list)  # (bucket start, epoch s; events)
    applied_total: int = 0
    decisions_total: int = 0
    hot_entities: list[Hotspot] = field(default_factory=list)
    hot_fields: list[FieldHotspot] = field(default_factory=list)
    devices_total: int = 0
    versions: list[VersionShare] = field(default_factory=list)
    backlog: list[Backlog] = field(default_factory=list)
    devices_behind: int = 0
    outbox_rows: int = 0
    error: str | None = None


@dataclass(frozen=True)
class HistoryPoint:
    """One refresh of the dashboard, kept for the throughput and lag charts."""

    at_ms: int
    lag: int
    end_total: int
    position_total: int
    dead_letters: int


@dataclass
class Snapshot:
    """What the dashboard shows: one reading of Kafka and PostgreSQL plus the recent history."""

    generated_at_ms: int
    topic_prefix: str
    pg_schema: str
    group: str
    kafka: KafkaView
    pg: PgView
    history: list[HistoryPoint] = field(default_factory=list)
    retries: dict[str, float] = field(default_factory=dict)  # from the services' /metrics, when configured

    def rates(self) -> dict[str, float]:
        """Records/s written to and projected from the change topics, over the history kept."""
        if len(self.history) < 2:
            return {"produced_per_s": 0.0, "projected_per_s": 0.0}
        first, last = self.history[0], self.history[-1]
        seconds = max(0.001, (last.at_ms - first.at_ms) / 1000)
        return {
            "produced_per_s": max(0.0, (last.end_total - first.end_total) / seconds),
            "projected_per_s": max(0.0, (last.position_total - first.position_total) / seconds),
        }

    def to_json(self) -> dict[str, Any]:
        """The JSON the dashboard page polls."""
        body = asdict(self)
        body["kafka"]["total_lag"] = self.kafka.total_lag
        body["rates"] = self.rates()
        return body


def lag_of(
    ends: Mapping[Partition, int],
    starts: Mapping[Partition, int],
    committed: Mapping[Partition, int],
    stored: Iterable[StoredOffset] = (),
) -> list[PartitionLag]:
    """Per-partition lag: end minus the furthest known position (never negative, never before the log start)."""
    stored_at = {(s.topic, s.partition): s.next_offset for s in stored}
    result: list[PartitionLag] = []
    for key in sorted(ends):
        end, start = ends[key], starts.get(key, 0)
        known = [v for v in (committed.get(key), stored_at.get(key)) if v is not None]
        position = max(known) if known else None
        lag = max(0, end - max(position if position is not None else 0, start))
        result.append(PartitionLag(key[0], key[1], end, start, position, lag))
    return result
