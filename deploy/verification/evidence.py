"""Gathering the checker's evidence from a running Keel: device stores, PostgreSQL and the Kafka log.

- `device_evidence`: the ops a device holds as acknowledged (status sent), the seqs it knows were consumed
  without an event (quarantined: rejected or abandoned), and its digest per entity type in its version;
- `read_projection`: the dedup table (`applied_ops`, with the projection time of each op), the change-feed
  rows of the outbox, the gateway's rejected/abandoned seqs, and digests in any versions;
- `read_log`: every record of the change topics from the beginning up to the end offsets at the call,
  decoded with the registry (writer schema, then migrated to the current version, as the projector does),
  with the gateway's `keel-accepted-at-ms` header of each op's first copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from consumers.decoder import EventDecoder, Undecodable, entity_of_topic
from consumers.kafka_source_adapter import KafkaSource
from deploy.verification.checker import AckedOp, AppliedOp, DeviceDigest, DigestKey, LogEntry, op_fingerprint
from deploy.verification.replay import digests_in_versions
from keel.event_log import LogRecord
from keel.settings import Settings
from producers.device import Device
from producers.device.store import OpStatus
from projections.batch import SourcedEvent, TopicPartition
from projections.pg_adapter import Pool, pg_errors
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import in_schema
from projections.store import VisibleRow
from schemas.catalog import Catalog, default_catalog
from schemas.envelope import TraceHeaders
from schemas.migrations import MigrationRegistry
from schemas.registry import SchemaRegistry

__all__ = [
    "DeviceEvidence",
    "LogRead",
    "ProjectionRead",
    "device_evidence",
    "projection_digests",
    "read_log",
    "read_projection",
]

DedupKey = tuple[str, int]


@dataclass(frozen=True)
class DeviceEvidence:
    """What one device holds."""

    device_id: str
    tenant_id: str
    acknowledged: list[AckedOp]
    quarantined: frozenset[int]
    pending: int
    digests: list[DeviceDigest]


def device_evidence(device: Device) -> DeviceEvidence:
    """Read a device's op-log and digests (local reads only)."""
    with device.replica.store.transaction() as tx:
        sent = tx.ops(OpStatus.SENT)
        quarantined = tx.ops(OpStatus.QUARANTINED)
        pending = tx.count_ops(OpStatus.PENDING)
    acknowledged = [AckedOp(device.device_id, op.seq, op.event.event_id, op_fingerprint(op.event)) for op in sent]
    digests = [
        DeviceDigest(
            device.device_id,
            device.tenant_id,
            entity_type,
            device.replica.local_version(entity_type),
            device.digest(entity_type),
        )
        for entity_type in sorted(device.replica.supported_versions)
    ]
    return DeviceEvidence(
        device.device_id,
        device.tenant_id,
        acknowledged,
        frozenset(op.seq for op in quarantined),
        pending,
        digests,
    )


@dataclass(frozen=True)
class ProjectionRead:
    """What the projection holds."""

    applied: list[AppliedOp]
    applied_at_ms: dict[DedupKey, int]
    feed_event_ids: list[str]
    consumed_without_event: dict[str, frozenset[int]]
    decisions: int


_PROJECTION_SQL = {
    "applied": "SELECT device_id, device_seq, event_id, topic, partition, log_offset, "
    "(extract(epoch FROM applied_at) * 1000)::bigint AS applied_ms FROM {schema}.applied_ops",
    "feed": "SELECT event_id FROM {schema}.outbox WHERE kind = 'change' AND event_id IS NOT NULL",
    "decisions": "SELECT count(*) FROM {schema}.conflict_decisions",
    # The gateway's ledger, when the gateway shares the schema: seqs consumed without an event.
    "ledger": "SELECT to_regclass('{schema}.device_seq_outcomes') IS NOT NULL",
    "outcomes": "SELECT device_id, seq FROM {schema}.device_seq_outcomes WHERE outcome <> 'accepted'",
}


async def read_projection(pool: Pool, schema: str) -> ProjectionRead:
    """Read the dedup table, the change feed, the decision count and the gateway's non-accepted seqs."""
    sql = {name: in_schema(text, schema) for name, text in _PROJECTION_SQL.items()}
    async with (
        pg_errors("read the projection"),
        pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        rows = await connection.fetch(sql["applied"])
        feed = await connection.fetch(sql["feed"])
        decisions = int(await connection.fetchval(sql["decisions"]))
        outcomes = await connection.fetch(sql["outcomes"]) if await connection.fetchval(sql["ledger"]) else []
    consumed: dict[str, set[int]] = {}
    for row in outcomes:
        consumed.setdefault(row["device_id"], set()).add(int(row["seq"]))
    return ProjectionRead(
        applied=[
            AppliedOp(r["device_id"], int(r["device_seq"]), r["event_id"], r["topic"], r["partition"], r["log_offset"])
            for r in rows
        ],
        applied_at_ms={(r["device_id"], int(r["device_seq"])): int(r["applied_ms"]) for r in rows},
        feed_event_ids=[r["event_id"] for r in feed],
        consumed_without_event={device: frozenset(seqs) for device, seqs in consumed.items()},
        decisions=decisions,
    )


async def projection_digests(
    pool: Pool,
    schema: str,
    versions: Mapping[str, Iterable[int]],
    migrations: MigrationRegistry,
    catalog: Catalog | None = None,
) -> dict[DigestKey, str]:
    """Digests of the projection's live rows per (tenant, entity type, version) for the versions asked."""
    store = PgProjectionStore(pool, schema)
    rows: dict[str, list[VisibleRow]] = {}
    for entity_type in versions:
        rows[entity_type] = await store.visible_rows(entity_type)
    return digests_in_versions(rows, versions, migrations, catalog)


@dataclass
class LogRead:
    """The change topics, decoded."""

    entries: list[LogEntry] = field(default_factory=list)
    events: list[SourcedEvent] = field(default_factory=list)
    accepted_at_ms: dict[DedupKey, int] = field(default_factory=dict)
    undecodable: int = 0
    end_offsets: dict[TopicPartition, int] = field(default_factory=dict)


class _Assignments:
    """A rebalance handler for a groupless reader: nothing to do, the reader owns every partition."""

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Nothing was ours to give back."""
        del partitions

    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Every partition, once."""
        del partitions


async def read_log(
    settings: Settings,
    registry: SchemaRegistry,
    migrations: MigrationRegistry,
    *,
    catalog: Catalog | None = None,
    timeout_s: float = 120.0,
) -> LogRead:
    """Every record of the change topics up to their end offsets now, decoded; TimeoutError past `timeout_s`."""
    catalog = catalog or default_catalog()
    topics = [settings.topic_for(entity) for entity in catalog.entities()]
    decoder = EventDecoder(registry, migrations, entity_of_topic(settings.topic_prefix), catalog=catalog)
    source = KafkaSource(settings, topics, group_id=None)
    result = LogRead()
    await source.start(_Assignments())
    try:
        partitions = sorted(source.assignment())
        result.end_offsets = await source.end_offsets(partitions)
        for partition in partitions:
            source.seek(partition, 0)
        deadline = time.monotonic() + timeout_s
        remaining = {p for p, end in result.end_offsets.items() if end > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading the log: {len(remaining)} partitions not read to their end")
            fetched = await source.getmany(500, 5000)
            for partition, records in fetched.items():
                for record in records:
                    if record.offset >= result.end_offsets.get(partition, 0):
                        break
                    await _decode_into(result, decoder, record)
            for partition in list(remaining):
                # Transaction markers occupy offsets without records: compare the fetch position, not the last record.
                if await source.position(partition) >= result.end_offsets[partition]:
                    remaining.discard(partition)
            await asyncio.sleep(0)
    finally:
        await source.stop()
    return result


async def _decode_into(result: LogRead, decoder: EventDecoder, record: LogRecord) -> None:
    decoded = await decoder.decode(record)
    if isinstance(decoded, Undecodable):
        result.undecodable += 1
        return
    event = decoded.event
    result.events.append(decoded)
    result.entries.append(
        LogEntry(
            event.device_id,
            event.device_seq,
            event.event_id,
            op_fingerprint(event),
            record.topic,
            record.partition,
            record.offset,
        )
    )
    headers = TraceHeaders.from_list(record.headers).values
    accepted = headers.get(TraceHeaders.ACCEPTED_AT_MS)
    if accepted is not None and event.dedup_key not in result.accepted_at_ms:
        result.accepted_at_ms[event.dedup_key] = int(accepted.decode())
