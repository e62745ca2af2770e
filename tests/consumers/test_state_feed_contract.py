"""One contract, two feeds: the in-memory `StateFeed` and PostgreSQL read the outbox and states alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.outbox import START, Cursor, OutboxKind, OutboxReader
from projections.outbox_pg_adapter import PgOutbox
from projections.pg_adapter import connect_pool
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrator_adapter import migrate
from projections.state_feed import InMemoryStateFeed, StateFeed
from projections.state_feed_pg_adapter import PgStateFeed
from projections.store import InMemoryProjectionStore, ProjectionStore
from schemas.envelope import ChangeEvent, Op
from tests.consumers.helpers import EventFactory
from tests.projections.fixtures import feed_settled

P0 = TopicPartition("k.task.changes", 0)


@dataclass
class Feeds:
    """A store to write through, the state feed and the device outbox over the same data."""

    store: ProjectionStore
    feed: StateFeed
    outbox: OutboxReader
    settle: Callable[[], Awaitable[None]]
    offset: int = 0

    async def apply(self, events: list[ChangeEvent]) -> None:
        """Commit events as one batch (one transaction), then wait until the feed shows it."""
        sourced = tuple(SourcedEvent(e, SourcePosition(P0.topic, 0, self.offset + i), 1) for i, e in enumerate(events))
        advance = OffsetAdvance(P0, self.offset or None, self.offset + len(events))
        assert (await self.store.apply_batch(ProjectionBatch("g", (advance,), sourced))).committed
        self.offset += len(events)
        await self.settle()


async def _settled() -> None:
    return None


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def feeds(request: pytest.FixtureRequest) -> AsyncIterator[Feeds]:
    """The in-memory feed over the fake store, and PostgreSQL on the test's own schema."""
    if request.param == "fake":
        fake = InMemoryProjectionStore()
        yield Feeds(fake, InMemoryStateFeed(fake), fake.outbox, _settled)
        return
    settings = request.getfixturevalue("keel_settings")
    pool = await connect_pool(settings.database_url, max_size=2)
    try:
        await migrate(pool, settings.pg_schema)
        yield Feeds(
            PgProjectionStore(pool, settings.pg_schema),
            PgStateFeed(pool, settings.pg_schema),
            PgOutbox(pool, settings.pg_schema),
            lambda: feed_settled(pool, settings.pg_schema),
        )
    finally:
        await pool.close()


async def test_read_gives_every_tenants_changes_in_commit_order_without_device_rows(feeds: Feeds) -> None:
    factory = EventFactory(seed=1)
    first = [
        factory.event("dev-a", "t1", title="a", physical_ms=1_000),
        factory.event("dev-b", "t1", title="b", physical_ms=1_000),  # concurrent: a conflict row for one device
        factory.event("dev-c", "t1", tenant_id="tenant-b", title="other tenant, same id"),
    ]
    second = [factory.event("dev-a", "t2", title="c"), factory.event("dev-a", "t1", op=Op.DELETE)]
    await feeds.apply(first)
    await feeds.apply(second)

    page = await feeds.feed.read(START)
    assert not page.pruned
    assert [(c.tenant_id, c.entity_id) for c in page.changes] == [
        ("tenant-a", "t1"),
        ("tenant-a", "t1"),
        ("tenant-b", "t1"),
        ("tenant-a", "t2"),
        ("tenant-a", "t1"),
    ]
    assert {c.kind for c in page.changes} == {OutboxKind.CHANGE}  # device-addressed conflict notices left out
    assert [c.cursor for c in page.changes] == sorted(c.cursor for c in page.changes)
    assert page.next_cursor == page.changes[-1].cursor
    head = await feeds.feed.read(START, limit=2)
    rest = await feeds.feed.read(head.next_cursor)
    assert head.changes + rest.changes == page.changes
    assert (await feeds.feed.read(page.next_cursor)).changes == ()


async def test_cursors_are_stored_per_relay_and_never_move_back(feeds: Feeds) -> None:
    assert await feeds.feed.load_cursor("r1") is None
    await feeds.feed.store_cursor("r1", Cursor(10, 5))
    await feeds.feed.store_cursor("r1", Cursor(9, 99))
    await feeds.feed.store_cursor("r2", Cursor(1, 1))
    assert await feeds.feed.load_cursor("r1") == Cursor(10, 5)
    assert await feeds.feed.load_cursor("r2") == Cursor(1, 1)


async def test_a_cursor_below_a_prune_horizon_reads_as_pruned_until_the_resume_point(feeds: Feeds) -> None:
    factory = EventFactory(seed=2)
    await feeds.apply([factory.event("dev-a", "t1", title="a"), factory.event("dev-a", "t2", title="b")])
    page = await feeds.feed.read(START)
    before = await feeds.feed.resume_point()
    await feeds.outbox.acknowledge("tenant-a", "dev-a", page.next_cursor.encode())
    assert await feeds.outbox.prune("tenant-a") == 2

    assert (await feeds.feed.read(START)).pruned
    resume = await feeds.feed.resume_point()
    assert resume >= page.next_cursor
    assert resume >= before
    assert not (await feeds.feed.read(resume)).pruned
    await feeds.apply([factory.event("dev-a", "t3", title="later")])
    after = await feeds.feed.read(resume)
    assert [c.entity_id for c in after.changes] == ["t3"]  # nothing after the resume point is lost


async def test_states_after_pages_every_state_in_key_order_optionally_of_one_tenant(feeds: Feeds) -> None:
    factory = EventFactory(seed=3)
    events = [
        factory.event("dev-a", f"t{i}", tenant_id=tenant, title=f"{tenant}-{i}")
        for tenant in ("b", "a")
        for i in range(3)
    ]
    events.append(factory.event("dev-a", "t1", tenant_id="a", op=Op.DELETE))
    await feeds.apply(events)

    keys = []
    after = None
    while states := await feeds.feed.states_after("task", after, 2):
        keys += [(s.tenant_id, s.entity_id) for s in states]
        after = keys[-1]
    assert keys == [("a", "t0"), ("a", "t1"), ("a", "t2"), ("b", "t0"), ("b", "t1"), ("b", "t2")]
    only_b = await feeds.feed.states_after("task", None, tenant_id="b")
    assert [(s.tenant_id, s.entity_id) for s in only_b] == [("b", "t0"), ("b", "t1"), ("b", "t2")]
    deleted = await feeds.feed.states_after("task", ("a", "t0"), 1)
    assert not deleted[0].is_alive  # a deleted entity keeps its state: the relay publishes deleted=true
    assert await feeds.feed.states_after("comment", None) == []
