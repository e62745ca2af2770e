"""One contract, two outboxes: ordered, resumable feeds; device-only rows; pruning with a resync signal."""

from __future__ import annotations

import pytest

from keel.errors import ValidationError
from keel.settings import Settings
from projections.batch import OffsetAdvance, ProjectionBatch, Rejection, SourcedEvent, SourcePosition, TopicPartition
from projections.outbox import Cursor, OutboxKind
from projections.outbox_pg_adapter import PgOutbox
from projections.pg_adapter import Pool
from projections.sql_migrations import in_schema
from tests.consumers.helpers import EventFactory
from tests.projections.fixtures import Stores, feed_settled

TOPIC = "k.task.changes"
P0 = TopicPartition(TOPIC, 0)


class Writer:
    """Commits batches of events for tenant-a through the store (which writes the outbox)."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.factory = EventFactory()
        self.offset = 0

    async def changes(self, count: int, *, rejections: tuple[Rejection, ...] = ()) -> list[str]:
        events = [self.factory.event(f"dev-{i % 2}", f"t{i}", title=str(i)) for i in range(count)]
        sourced = tuple(SourcedEvent(e, SourcePosition(TOPIC, 0, self.offset + i)) for i, e in enumerate(events))
        expected = None if self.offset == 0 else self.offset
        self.offset += count + len(rejections)
        await self.stores.store.apply_batch(
            ProjectionBatch("g", (OffsetAdvance(P0, expected, self.offset),), sourced, rejections)
        )
        await self.stores.settle()
        return [e.event_id for e in events]


async def read_all(stores: Stores, device: str, cursor: str | None, limit: int = 3) -> tuple[list[str], str]:
    seen: list[str] = []
    while True:
        page = await stores.outbox.read("tenant-a", device, cursor, limit)
        assert not page.resync_required
        seen += [item.entry.event_id or "" for item in page.entries]
        if not page.entries:
            return seen, page.next_cursor
        cursor = page.next_cursor


async def test_pages_resume_from_the_cursor_in_commit_order(stores: Stores) -> None:
    writer = Writer(stores)
    first = await writer.changes(4)
    second = await writer.changes(3)
    seen, cursor = await read_all(stores, "dev-9", None)
    assert seen == first + second
    assert Cursor.parse(cursor) > Cursor.parse(None)
    third = await writer.changes(2)
    assert (await read_all(stores, "dev-9", cursor))[0] == third
    with pytest.raises(ValidationError, match="invalid outbox cursor"):
        await stores.outbox.read("tenant-a", "dev-9", "not-a-cursor")
    assert (await stores.outbox.read("tenant-b", "dev-9", None)).entries == ()


async def test_device_rows_reach_only_their_device(stores: Stores) -> None:
    writer = Writer(stores)
    rejection = Rejection(SourcePosition(TOPIC, 0, 99), "ValidationError", "bad", "tenant-a", "dev-7", "ev-bad")
    await writer.changes(1, rejections=(rejection,))
    mine = await stores.outbox.read("tenant-a", "dev-7", None)
    other = await stores.outbox.read("tenant-a", "dev-8", None)
    assert [i.entry.kind for i in mine.entries] == [OutboxKind.CHANGE, OutboxKind.REJECTED]
    assert [i.entry.kind for i in other.entries] == [OutboxKind.CHANGE]


async def test_prune_keeps_what_a_device_has_not_acknowledged_and_signals_resync_past_it(stores: Stores) -> None:
    writer = Writer(stores)
    await writer.changes(3)
    _, after_three = await read_all(stores, "fast", None)
    later = await writer.changes(2)
    _, after_five = await read_all(stores, "fast", None)
    await stores.outbox.acknowledge("tenant-a", "fast", after_five)
    await stores.outbox.acknowledge("tenant-a", "slow", after_three)
    await stores.outbox.acknowledge("tenant-a", "fast", after_three)  # never moves back
    assert await stores.outbox.prune("tenant-a") == 3
    assert (await read_all(stores, "slow", after_three))[0] == later
    assert (await stores.outbox.read("tenant-a", "new-device", None)).resync_required
    assert await stores.outbox.prune("tenant-a") == 0
    assert await stores.outbox.prune("tenant-a", retention_s=0) == 2  # past retention: pruned regardless
    lagging = await stores.outbox.read("tenant-a", "slow", after_three)
    assert lagging.resync_required
    assert lagging.entries == ()
    resumed = await stores.outbox.current_cursor("tenant-a")
    fresh = await writer.changes(1)
    assert (await read_all(stores, "slow", resumed))[0] == fresh


@pytest.mark.integration
async def test_a_transaction_that_commits_late_is_never_skipped(keel_settings: Settings, pool: Pool) -> None:
    outbox = PgOutbox(pool, keel_settings.pg_schema)
    insert = in_schema(
        "INSERT INTO {schema}.outbox (tenant_id, kind, event_id, body) VALUES ('tenant-a', 'change', $1, '{}')",
        keel_settings.pg_schema,
    )
    async with pool.acquire() as slow, pool.acquire() as quick:
        transaction = slow.transaction()
        await transaction.start()
        await slow.execute(insert, "slow")  # takes the smaller pos, commits last
        await quick.execute(insert, "quick")
        page = await outbox.read("tenant-a", "dev", None)
        assert page.entries == ()  # "quick" waits behind the open transaction instead of being passed
        await transaction.commit()
    await feed_settled(pool, keel_settings.pg_schema)
    page = await outbox.read("tenant-a", "dev", page.next_cursor)
    assert [item.entry.event_id for item in page.entries] == ["slow", "quick"]


async def test_the_trace_context_of_a_change_travels_with_its_outbox_rows(stores: Stores) -> None:
    factory = EventFactory()
    trace_a = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    trace_b = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    events = [
        factory.event("dev-a", "t1", title="a"),
        factory.event("dev-b", "t1", title="b"),  # concurrent with dev-a's: a conflict notice for the loser
    ]
    sourced = tuple(
        SourcedEvent(e, SourcePosition(TOPIC, 0, i), trace=t)
        for i, (e, t) in enumerate(zip(events, (trace_a, trace_b), strict=True))
    )
    await stores.store.apply_batch(ProjectionBatch("g", (OffsetAdvance(P0, None, 2),), sourced))
    await stores.settle()
    page = await stores.outbox.read("tenant-a", "dev-a", None)
    traces = {(item.entry.kind, item.entry.event_id): item.entry.trace for item in page.entries}
    assert traces[(OutboxKind.CHANGE, events[0].event_id)] == trace_a
    assert traces[(OutboxKind.CHANGE, events[1].event_id)] == trace_b
    assert traces[(OutboxKind.CONFLICT, events[0].event_id)] == trace_b  # the write whose arrival decided it
