"""Tombstones are compacted only once every device has read past them and the retention passed — and a
compacted tombstone still keeps an older late write from resurrecting its entity."""

from __future__ import annotations

import pytest

from keel.settings import Settings
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.conflict_rules import merge_events
from projections.outbox_pg_adapter import PgOutbox
from projections.pg_adapter import Pool
from projections.pg_admin_adapter import PgAdmin
from projections.pg_store_adapter import PgProjectionStore
from projections.state_codec import compact_tombstone
from schemas.envelope import ChangeEvent, Op
from tests.consumers.helpers import EventFactory
from tests.projections.fixtures import feed_settled

pytestmark = pytest.mark.integration
P0 = TopicPartition("k.task.changes", 0)


class Feed:
    def __init__(self, store: PgProjectionStore) -> None:
        self.store = store
        self.offset = 0

    async def apply(self, events: list[ChangeEvent]) -> None:
        sourced = tuple(SourcedEvent(e, SourcePosition(P0.topic, 0, self.offset + i)) for i, e in enumerate(events))
        expected = None if self.offset == 0 else self.offset
        self.offset += len(events)
        await self.store.apply_batch(ProjectionBatch("g", (OffsetAdvance(P0, expected, self.offset),), sourced))
        await feed_settled(self.store.pool, self.store.schema)


async def test_tombstones_wait_for_every_device_and_the_retention(keel_settings: Settings, pool: Pool) -> None:
    schema = keel_settings.pg_schema
    store, outbox, admin = PgProjectionStore(pool, schema), PgOutbox(pool, schema), PgAdmin(pool)
    feed = Feed(store)
    factory = EventFactory()
    created = [factory.event("dev-a", entity, title=entity) for entity in ("a", "b", "c")]
    await feed.apply(created)
    before_delete = (await outbox.read("tenant-a", "slow", None)).next_cursor
    deletes = [factory.event("dev-b", entity, op=Op.DELETE, base_ms=factory.clock_ms) for entity in ("a", "b")]
    await feed.apply(deletes)
    everything = (await outbox.read("tenant-a", "fast", None)).next_cursor
    await outbox.acknowledge("tenant-a", "fast", everything)
    await outbox.acknowledge("tenant-a", "slow", before_delete)
    digests_before = await admin.digests(schema, ["task"])

    assert await admin.compact_tombstones(schema, ["task"], retention_s=0) == 0  # "slow" has not read the deletes
    await outbox.acknowledge("tenant-a", "slow", everything)
    assert await admin.compact_tombstones(schema, ["task"], retention_s=3_600) == 0  # retention not passed
    assert await admin.compact_tombstones(schema, ["task"], retention_s=0) == 2
    assert await admin.compact_tombstones(schema, ["task"], retention_s=0) == 0  # already compact

    expected = compact_tombstone(merge_events([created[0], deletes[0]]).state)
    assert await store.entity_state("task", "tenant-a", "a") == expected
    assert await admin.digests(schema, ["task"]) == digests_before
    late = factory.event("dev-c", "a", physical_ms=created[0].hlc.physical_ms, title="offline, before the delete")
    await feed.apply([late])
    assert [entity for _, entity, _ in await store.visible_rows("task")] == ["c"]
    await feed.apply([factory.event("dev-c", "b", title="recreated later")])
    assert [entity for _, entity, _ in await store.visible_rows("task")] == ["b", "c"]
