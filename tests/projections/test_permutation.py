"""One event set, many delivery orders (partitions, topics, batch splits): one final state, one decision set."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from keel.settings import Settings
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.conflict_rules import merge_events
from projections.decisions import decision_to_json
from projections.digest import digests_by_tenant
from projections.overrides import OverrideRequest, build_override
from projections.pg_adapter import connect_pool
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrator_adapter import migrate
from projections.store import InMemoryProjectionStore, ProjectionStore
from schemas.envelope import ChangeEvent, Op
from tests.consumers.helpers import EventFactory

TOPICS = ("a.task.changes", "b.task.changes")


def event_set() -> list[ChangeEvent]:
    factory = EventFactory(seed=77)
    events = factory.random_task_events(45, devices=4, entities=5)
    events.append(factory.event("dev-9", "task-0", op=Op.DELETE))
    events.append(factory.event("dev-8", "task-0", title="edited offline, after the delete"))
    first = merge_events([e for e in events if e.entity_id == "task-1"])
    decision = next(d for d in first.decisions if d.field != "*")
    events.append(
        build_override(decision, first.state, OverrideRequest(decision.decision_id, "r", "ops", keep="loser"), seq=1)
    )
    return events


async def deliver(store: ProjectionStore, events: Sequence[ChangeEvent], rng: random.Random) -> None:
    """Apply `events` in a random order, spread over random partitions of two topics, in random batch sizes."""
    order = rng.sample(list(events), len(events))
    offsets: dict[TopicPartition, int] = {}
    index = 0
    while index < len(order):
        size = rng.randint(1, 9)
        chunk, index = order[index : index + size], index + size
        sourced, expected = [], {}
        for event in chunk:
            partition = TopicPartition(rng.choice(TOPICS), rng.randrange(3))
            expected.setdefault(partition, offsets.get(partition))
            offset = offsets.get(partition, 0)
            sourced.append(SourcedEvent(event, SourcePosition(partition.topic, partition.partition, offset)))
            offsets[partition] = offset + 1
        advances = tuple(OffsetAdvance(p, expected[p], offsets[p]) for p in expected)
        assert (await store.apply_batch(ProjectionBatch("g", advances, tuple(sourced)))).committed


async def outcome(store: ProjectionStore) -> tuple[dict[str, tuple[int, str]], list[str]]:
    digest = digests_by_tenant(await store.visible_rows("task"))
    decisions = sorted(str(sorted(decision_to_json(r.decision).items())) for r in await store.decisions(limit=10_000))
    return digest, decisions


async def test_many_orders_in_memory_give_one_state_and_one_decision_set() -> None:
    events = event_set()
    reference = None
    for seed in range(150):
        store = InMemoryProjectionStore()
        await deliver(store, events, random.Random(seed))
        result = await outcome(store)
        reference = reference or result
        assert result == reference, f"order {seed} diverged"
    assert reference is not None
    assert reference[1], "the event set must contain conflicts"


@pytest.mark.integration
async def test_orders_through_postgresql_agree_with_each_other_and_with_memory(keel_settings: Settings) -> None:
    events = event_set()
    memory = InMemoryProjectionStore()
    await deliver(memory, events, random.Random(0))
    expected = await outcome(memory)
    pool = await connect_pool(keel_settings.database_url, max_size=2)
    try:
        for seed in range(6):
            schema = f"{keel_settings.pg_schema}_p{seed}"
            await migrate(pool, schema)
            store = PgProjectionStore(pool, schema)
            await deliver(store, events, random.Random(1_000 + seed))
            assert await outcome(store) == expected, f"order {seed} diverged in PostgreSQL"
    finally:
        await pool.close()
