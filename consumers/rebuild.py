"""Rebuild: replay the log into a shadow schema, compare digests with the live one, optionally swap.

The replay is a separate consumer that assigns every partition itself (no group, no group commits, so the
live projector is undisturbed) and writes the live group's offsets into the shadow schema, which is what
makes a swapped-in table continue exactly where its replay stopped. It replays up to the live schema's
stored offsets (read together with the live digests in one snapshot), so both sides cover the same log
prefix; if the live projector moves on meanwhile, the replay follows for a few rounds.

This is also the rollback path for a bad migration step: disable it (`KEEL_DISABLED_MIGRATIONS`), rebuild,
compare, swap (docs/runbooks/replay-and-rebuild.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from consumers.dead_letter import DeadLetterQueue
from consumers.decoder import EventDecoder, entity_of_topic
from consumers.kafka_source_adapter import KafkaSource
from consumers.runtime import ConsumerRuntime, RuntimeConfig
from consumers.signature_check import signature_check
from consumers.source import ConsumerSource, RebalanceHandler, Records
from keel.errors import ConfigurationError
from keel.event_log import OutgoingRecord, RecordPosition
from keel.logging import get_logger
from keel.settings import Settings
from projections.batch import TopicPartition
from projections.pg_adapter import Pool
from projections.pg_admin_adapter import PgAdmin, TableDigest
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrator_adapter import migrate
from schemas.catalog import Catalog, default_catalog
from schemas.migrations import MigrationRegistry
from schemas.registry import SchemaRegistry

__all__ = ["BoundedSource", "DigestComparison", "RebuildReport", "caught_up", "compare_digests", "rebuild"]

_log = get_logger("rebuild")
MAX_ROUNDS = 5


@dataclass(frozen=True)
class DigestComparison:
    """One table and tenant on both sides: (live entities, digest) against (shadow entities, digest)."""

    entity_type: str
    tenant_id: str
    live: tuple[int, str] | None
    shadow: tuple[int, str] | None

    @property
    def is_equal(self) -> bool:
        """Same entities with the same visible values."""
        return self.live == self.shadow


def compare_digests(live: Iterable[TableDigest], shadow: Iterable[TableDigest]) -> list[DigestComparison]:
    """Pair up per (entity type, tenant); a side without a row has no live entity there."""
    left = {(d.entity_type, d.tenant_id): (d.count, d.digest) for d in live}
    right = {(d.entity_type, d.tenant_id): (d.count, d.digest) for d in shadow}
    return [DigestComparison(e, t, left.get((e, t)), right.get((e, t))) for e, t in sorted(set(left) | set(right))]


@dataclass
class RebuildReport:
    """What a rebuild did."""

    live_schema: str
    shadow_schema: str
    entities: tuple[str, ...]
    offsets: dict[TopicPartition, int]
    comparisons: list[DigestComparison] = field(default_factory=list)
    applied: int = 0
    dead_letters_seen: int = 0
    swapped: bool = False
    archive_schema: str | None = None
    seconds: float = 0.0

    @property
    def matches(self) -> bool:
        """Every table and tenant has the same digest on both sides."""
        return all(c.is_equal for c in self.comparisons)


class BoundedSource:
    """A `ConsumerSource` that never hands out a record at or past its partition's target offset."""

    def __init__(self, inner: ConsumerSource, targets: Mapping[TopicPartition, int]) -> None:
        self.inner = inner
        self.targets = dict(targets)

    def raise_targets(self, targets: Mapping[TopicPartition, int]) -> None:
        """Move targets forward (never back) and resume partitions that have more to read."""
        for partition, offset in targets.items():
            self.targets[partition] = max(offset, self.targets.get(partition, 0))
        self.inner.resume(self.targets)

    async def start(self, handler: RebalanceHandler) -> None:
        """Start the inner source."""
        await self.inner.start(handler)

    async def getmany(self, timeout_ms: int, max_records: int) -> Records:
        """Inner records below the targets; partitions that reached theirs are paused."""
        fetched = await self.inner.getmany(timeout_ms, max_records)
        kept: Records = {}
        for partition, records in fetched.items():
            target = self.targets.get(partition, 0)
            below = [r for r in records if r.offset < target]
            if len(below) < len(records):
                self.inner.pause([partition])
                self.inner.seek(partition, target)
            if below:
                kept[partition] = below
        return kept

    def assignment(self) -> frozenset[TopicPartition]:
        """Inner assignment."""
        return self.inner.assignment()

    async def position(self, partition: TopicPartition) -> int:
        """Inner position."""
        return await self.inner.position(partition)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Inner seek."""
        self.inner.seek(partition, offset)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Inner pause."""
        self.inner.pause(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Inner resume, except for partitions already at their target."""
        self.inner.resume(partitions)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Inner commit."""
        await self.inner.commit(offsets)

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Inner end offsets."""
        return await self.inner.end_offsets(partitions)

    async def stop(self) -> None:
        """Stop the inner source."""
        await self.inner.stop()


class _CountingSink:
    """Dead letters met during a replay were dead-lettered when first consumed: count them, do not resend."""

    def __init__(self) -> None:
        self.count = 0

    async def start(self) -> None:
        """Nothing to connect."""

    async def write(self, records: Sequence[OutgoingRecord]) -> list[RecordPosition]:
        """Count and log."""
        await asyncio.sleep(0)
        self.count += len(records)
        for record in records:
            _log.warning("replay met a dead letter", topic=record.topic, headers=dict(record.headers))
        return [RecordPosition(r.topic, 0, -1) for r in records]

    async def stop(self) -> None:
        """Nothing to flush."""


async def caught_up(runtime: ConsumerRuntime, targets: Mapping[TopicPartition, int]) -> bool:
    """Whether a replaying runtime has applied everything below `targets` (and no batch is in flight)."""
    if runtime.batch_started_at is not None:
        return False
    for partition, target in targets.items():
        position = runtime.positions.get(partition)
        if target == 0 or (position is not None and position >= target):
            continue
        # Transaction markers occupy offsets without records: the fetch position passing the target counts.
        if partition not in runtime.positions or await runtime.source.position(partition) < target:
            return False
    return True


async def rebuild(
    settings: Settings,
    pool: Pool,
    registry: SchemaRegistry,
    migrations: MigrationRegistry,
    *,
    entities: Sequence[str] | None = None,
    into: str | None = None,
    swap: bool = False,
    allow_diff: bool = False,
    from_snapshot: str | None = None,
    catalog: Catalog | None = None,
    timeout_s: float = 3600.0,
) -> RebuildReport:
    """Replay into a shadow schema, compare with the live schema, and swap when asked (and equal or allowed)."""
    began = time.monotonic()
    catalog = catalog or default_catalog()
    chosen = tuple(entities or catalog.entities())
    unknown = sorted(set(chosen) - set(catalog.entities()))
    if unknown:
        raise ConfigurationError(f"unknown entity types: {', '.join(unknown)}")
    live = settings.pg_schema
    stamp = time.strftime("%Y%m%d%H%M%S")
    shadow = into or f"{live}_rb_{stamp}"
    admin = PgAdmin(pool)
    if shadow == live:
        raise ConfigurationError("the shadow schema must differ from the live one")
    if await admin.schema_exists(shadow):
        raise ConfigurationError(f"schema {shadow} already exists; choose another --into or drop it first")
    topics = [settings.topic_for(entity) for entity in chosen]
    await migrate(pool, shadow)
    if from_snapshot is not None:
        found = [s for s in await admin.snapshots(live) if s.name == from_snapshot]
        if not found:
            raise ConfigurationError(f"no snapshot named {from_snapshot!r} in {live}")
        await admin.restore_snapshot(found[0], shadow, chosen, topics)

    report = RebuildReport(live, shadow, chosen, {})
    decoder = EventDecoder(
        registry,
        migrations,
        entity_of_topic(settings.topic_prefix),
        catalog=catalog,
        signatures=signature_check(settings, pool),  # keys of the live schema: the shadow has none
    )
    live_digests = await _replay(settings, pool, decoder, report, topics=topics, deadline=began + timeout_s)
    report.comparisons = compare_digests(live_digests, await admin.digests(shadow, chosen))
    if swap:
        if not report.matches and not allow_diff:
            raise ConfigurationError(
                f"digests differ from {live} (see the comparison); pass --allow-diff to swap anyway "
                "(expected when rolling back a migration)"
            )
        report.archive_schema = f"{live}_pre_{stamp}"
        await admin.swap(
            live,
            shadow,
            entities=chosen,
            topics=topics,
            group_id=settings.consumer_group,
            archive=report.archive_schema,
        )
        await admin.drop_schema(shadow)
        report.swapped = True
    report.seconds = time.monotonic() - began
    return report


async def _replay(
    settings: Settings,
    pool: Pool,
    decoder: EventDecoder,
    report: RebuildReport,
    *,
    topics: Sequence[str],
    deadline: float,
) -> list[TableDigest]:
    """Run the replay consumer up to the live offsets (following them a few rounds); the live digests."""
    admin = PgAdmin(pool)
    sink = _CountingSink()
    source = KafkaSource(settings, topics, group_id=None)
    bounded = BoundedSource(source, {})
    runtime = ConsumerRuntime(
        bounded,
        PgProjectionStore(pool, report.shadow_schema),
        decoder,
        DeadLetterQueue(sink, settings.dlq_topic),
        RuntimeConfig(settings.consumer_group, max_records=settings.projector_batch_max_records, commit_to_log=False),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop), name="rebuild-replay")
    try:
        offsets, live_digests = await admin.digests_at(
            report.live_schema, report.entities, settings.consumer_group, topics
        )
        for round_number in range(1, MAX_ROUNDS + 1):
            if not offsets:
                # The live schema never committed anything for these topics: replay the whole log.
                await runtime.assigned.wait()
                offsets = await source.end_offsets(runtime.source.assignment())
            bounded.raise_targets(offsets)
            await _wait_caught_up(runtime, bounded.targets, task, deadline)
            offsets, live_digests = await admin.digests_at(
                report.live_schema, report.entities, settings.consumer_group, topics
            )
            if all(offset <= bounded.targets.get(p, 0) for p, offset in offsets.items()):
                break
            _log.info("live projection moved on during the replay; following", round=round_number)
        report.offsets = dict(bounded.targets)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    report.applied = runtime.stats.applied
    report.dead_letters_seen = sink.count
    return live_digests


async def _wait_caught_up(
    runtime: ConsumerRuntime, targets: Mapping[TopicPartition, int], task: asyncio.Task[None], deadline: float
) -> None:
    while not await caught_up(runtime, targets):
        if task.done():
            task.result()
            raise ConfigurationError("the replay consumer stopped before catching up")
        if time.monotonic() > deadline:
            raise TimeoutError("the replay did not catch up before the timeout")
        await asyncio.sleep(0.05)
