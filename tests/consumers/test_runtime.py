"""The consumer runtime on fakes: exactly once, dead letters with reasons, pause on outages, rebalances, fencing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from consumers.dead_letter import ERROR_CLASS, ERROR_MESSAGE, SCHEMA_ID, SOURCE_OFFSET, SOURCE_TOPIC
from consumers.runtime import ConsumerRuntime
from keel.event_log import OutgoingRecord
from keel.lifecycle import State
from projections.batch import TopicPartition
from projections.outbox import OutboxKind
from projections.store import InMemoryProjectionStore
from tests.consumers.fake_world import TOPIC, World, eventually
from tests.consumers.helpers import EventFactory


async def run(runtime: ConsumerRuntime, until: Callable[[], bool]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        await eventually(until)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert runtime.lifecycle.state is State.STOPPED


async def test_every_event_is_applied_once_and_poison_goes_to_the_dlq_with_reasons() -> None:
    world = World()
    factory = EventFactory()
    events = factory.random_task_events(40, entities=6)
    await world.produce(events[:20])
    await world.writer.write([OutgoingRecord(TOPIC, b"task-1", b"\x07garbage")])
    position = world.log.partition_for(TOPIC, b"task-1")
    poison_offset = world.log.end_offset(TOPIC, position) - 1
    await world.produce(events[20:])
    runtime = world.runtime()
    await run(runtime, lambda: runtime.stats.applied == 40 and runtime.stats.dead_lettered == 1)
    assert sorted(world.change_rows()) == sorted(e.event_id for e in events)
    (letter,) = world.dead_letters()
    assert letter[SOURCE_TOPIC] == TOPIC
    assert letter[SOURCE_OFFSET] == str(poison_offset)
    assert letter[ERROR_CLASS] == "DecodeError"
    assert "bad magic byte 0x07" in letter[ERROR_MESSAGE]
    assert letter[SCHEMA_ID] == ""
    ends = {TopicPartition(TOPIC, p): world.log.end_offset(TOPIC, p) for p in range(3)}
    assert await world.store.load_offsets("g", ends) == {p: o for p, o in ends.items() if o}


async def test_store_and_registry_outages_pause_and_resume_without_dead_letters() -> None:
    world = World()
    events = EventFactory().random_task_events(30)
    await world.produce(events)
    world.store.available = False
    world.registry.available = False
    runtime = world.runtime()
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await eventually(lambda: runtime.stats.transient_failures >= 3)
    assert runtime.waiting_on is not None
    assert runtime.stats.applied == 0
    world.registry.available = True
    await eventually(lambda: runtime.stats.transient_failures >= 5)
    world.store.available = True
    await eventually(lambda: runtime.stats.applied == 30)
    stop.set()
    await task
    assert runtime.waiting_on is None
    assert world.dead_letters() == []
    assert sorted(world.change_rows()) == sorted(e.event_id for e in events)


async def test_a_redelivery_is_a_no_op_and_a_replayed_seq_is_dead_lettered() -> None:
    world = World()
    factory = EventFactory()
    original = factory.event("dev-a", "t1", title="original")
    replay = factory.event("dev-a", "t2", seq=original.device_seq, title="replayed seq")
    after = factory.event("dev-b", "t3", title="after")
    await world.produce([original, original, replay, after])
    runtime = world.runtime()
    await run(runtime, lambda: runtime.stats.applied == 2 and runtime.stats.dead_lettered == 1)
    assert runtime.stats.duplicates == 1
    (letter,) = world.dead_letters()
    assert letter[ERROR_CLASS] == "SequenceError"
    assert "replays the sequence number" in letter[ERROR_MESSAGE]
    rejected = [r.entry for r in world.store.outbox.rows if r.entry.kind is OutboxKind.REJECTED]
    assert [(r.device_id, r.event_id) for r in rejected] == [("dev-a", replay.event_id)]


async def test_members_joining_and_leaving_apply_everything_exactly_once() -> None:
    world = World()
    factory = EventFactory(seed=5)
    events = factory.random_task_events(120, entities=15)
    first, second = world.runtime(max_records=5), world.runtime(max_records=5)
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    task_first = asyncio.create_task(first.run(stop_first))
    await world.produce(events[:40])
    await eventually(lambda: first.stats.applied > 10)
    task_second = asyncio.create_task(second.run(stop_second))
    await world.produce(events[40:80])
    await eventually(lambda: first.stats.applied + second.stats.applied > 60)
    stop_first.set()
    await task_first
    await world.produce(events[80:])
    await eventually(lambda: len(world.change_rows()) == 120)
    stop_second.set()
    await task_second
    assert second.stats.applied > 0
    assert sorted(world.change_rows()) == sorted(e.event_id for e in events)
    assert first.stats.applied + second.stats.applied == 120


class GatedStore(InMemoryProjectionStore):
    """Shares another store's data but holds every batch until the gate opens (a consumer stuck mid-batch)."""

    def __init__(self, inner: InMemoryProjectionStore) -> None:
        super().__init__()
        self.inner = inner
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def load_offsets(self, group_id, partitions):  # type: ignore[no-untyped-def]
        return await self.inner.load_offsets(group_id, partitions)

    async def apply_batch(self, batch):  # type: ignore[no-untyped-def]
        self.waiting.set()
        await self.gate.wait()
        return await self.inner.apply_batch(batch)


async def test_a_zombie_that_lost_its_partitions_is_fenced_and_applies_nothing_twice() -> None:
    world = World()
    events = EventFactory(seed=9).random_task_events(30, entities=5)
    await world.produce(events)
    zombie = world.runtime(max_records=100)
    gated = GatedStore(world.store)
    zombie.store = gated
    zombie_stop = asyncio.Event()
    zombie_task = asyncio.create_task(zombie.run(zombie_stop))
    await asyncio.wait_for(gated.waiting.wait(), 10)  # the zombie holds a batch ...
    assert world.group is not None
    await world.group.evict(zombie.source)  # type: ignore[arg-type] # ... and its session expires unnoticed
    owner = world.runtime(max_records=100)
    await run(owner, lambda: len(world.change_rows()) == 30)
    gated.gate.set()  # the zombie wakes up and tries to commit what the owner already committed
    await eventually(lambda: zombie.stats.fenced == 1)
    zombie_stop.set()
    await zombie_task
    assert zombie.stats.applied == 0
    assert sorted(world.change_rows()) == sorted(e.event_id for e in events)
