"""One contract, two stores: the in-memory fake and PostgreSQL commit batches alike."""

from __future__ import annotations

import pytest

from keel.errors import FencedError
from projections.batch import OffsetAdvance, ProjectionBatch, Rejection, SourcedEvent, SourcePosition, TopicPartition
from projections.conflict_rules import merge_events
from projections.entity_tables import entity_tables
from projections.outbox import OutboxKind
from projections.overrides import OverrideRequest, build_override
from schemas.envelope import ChangeEvent
from tests.consumers.helpers import EventFactory
from tests.projections.fixtures import Stores

TOPIC = "k.task.changes"
P0 = TopicPartition(TOPIC, 0)
GROUP = "g"


def batch(events: list[ChangeEvent], start: int, expected: int | None, **extra: object) -> ProjectionBatch:
    sourced = tuple(SourcedEvent(e, SourcePosition(TOPIC, 0, start + i), 1) for i, e in enumerate(events))
    advance = OffsetAdvance(P0, expected, start + len(events))
    return ProjectionBatch(GROUP, (advance,), sourced, **extra)  # type: ignore[arg-type]


async def test_offsets_move_compare_and_set_and_a_stale_consumer_is_fenced(stores: Stores) -> None:
    factory = EventFactory()
    first = [factory.event("dev-a", "t1", title="a")]
    assert (await stores.store.apply_batch(batch(first, 0, None))).committed
    assert await stores.store.load_offsets(GROUP, [P0, TopicPartition(TOPIC, 1)]) == {P0: 1}
    stale = [factory.event("dev-b", "t2", title="b")]
    with pytest.raises(FencedError):
        await stores.store.apply_batch(batch(stale, 0, None))  # believes nothing was stored yet
    with pytest.raises(FencedError):
        await stores.store.apply_batch(batch(stale, 0, 0))
    assert await stores.store.entity_state("task", "tenant-a", "t2") is None  # nothing of it was written
    assert (await stores.store.apply_batch(batch(stale, 1, 1))).committed
    assert await stores.store.load_offsets(GROUP, [P0]) == {P0: 2}


async def test_redelivery_is_a_counted_no_op_and_a_replayed_seq_is_refused(stores: Stores) -> None:
    factory = EventFactory()
    event = factory.event("dev-a", "t1", title="once")
    first = await stores.store.apply_batch(batch([event], 0, None))
    again = await stores.store.apply_batch(batch([event, event], 1, 1))
    assert (first.applied, again.applied, again.duplicates) == (1, 0, 2)
    replay = factory.event("dev-a", "t9", seq=event.device_seq, title="same seq, other content")
    outcome = await stores.store.apply_batch(batch([replay], 3, 3))
    assert not outcome.committed
    assert [s.event.event_id for s in outcome.replayed] == [replay.event_id]
    assert await stores.store.load_offsets(GROUP, [P0]) == {P0: 3}
    await stores.settle()
    page = await stores.outbox.read("tenant-a", "dev-x", None)
    assert [item.entry.event_id for item in page.entries] == [event.event_id]  # one feed row, not three


async def test_rows_decisions_and_outbox_match_a_pure_merge(stores: Stores) -> None:
    factory = EventFactory(seed=3)
    events = factory.random_task_events(60, devices=3, entities=5)
    for index in range(0, len(events), 7):
        chunk = events[index : index + 7]
        outcome = await stores.store.apply_batch(batch(chunk, index, None if index == 0 else index))
        assert outcome.committed
    defaults = entity_tables()["task"].defaults()
    expected = {}
    expected_decisions = set()
    for entity in {e.entity_id for e in events}:
        merged = merge_events([e for e in events if e.entity_id == entity])
        expected_decisions |= {d.decision_id for d in merged.decisions}
        visible = merged.state.visible(defaults)
        if visible is not None:
            expected[entity] = visible
    rows = await stores.store.visible_rows("task", "tenant-a")
    assert {entity_id: values for _, entity_id, values in rows} == expected
    records = await stores.store.decisions(limit=10_000)
    assert {r.decision.decision_id for r in records} == expected_decisions
    await stores.settle()
    page = await stores.outbox.read("tenant-a", "dev-0", None, limit=1_000)
    changes = [i.entry for i in page.entries if i.entry.kind is OutboxKind.CHANGE]
    assert [c.event_id for c in changes] == [e.event_id for e in events]


async def test_a_decision_is_settled_by_its_override_and_rejections_reach_the_device(stores: Stores) -> None:
    factory = EventFactory()
    a = factory.event("phone", "t1", title="milk")
    b = factory.event("laptop", "t1", title="oat milk")
    await stores.store.apply_batch(batch([a, b], 0, None))
    (record,) = await stores.store.decisions()
    assert record.is_open
    assert (await stores.store.decision(record.decision.decision_id[:8])) == record
    state = await stores.store.entity_state("task", "tenant-a", "t1")
    override = build_override(
        record.decision, state, OverrideRequest(record.decision.decision_id, "milk", "ana", keep="loser"), seq=1
    )
    rejection = Rejection(SourcePosition(TOPIC, 0, 3), "ValidationError", "priority 9", "tenant-a", "phone", "ev")
    await stores.store.apply_batch(batch([override], 2, 2, rejections=(rejection,)))
    settled = await stores.store.decision(record.decision.decision_id)
    assert settled is not None
    assert settled.resolved_by == override.event_id
    assert not settled.is_open
    ((_, _, values),) = await stores.store.visible_rows("task")
    assert values["title"] == "milk"
    await stores.settle()
    mine = await stores.outbox.read("tenant-a", "phone", None)
    kinds = [(i.entry.kind, i.entry.device_id) for i in mine.entries]
    assert (OutboxKind.CONFLICT, "phone") in kinds
    assert (OutboxKind.REJECTED, "phone") in kinds
    theirs = await stores.outbox.read("tenant-a", "laptop", None)
    assert all(i.entry.device_id in (None, "laptop") for i in theirs.entries)


async def test_new_decisions_are_reported_once_with_the_earlier_write_of_their_pair(stores: Stores) -> None:
    factory = EventFactory()
    first = factory.event("dev-a", "t1", physical_ms=1_750_000_000_100, title="a")
    second = factory.event("dev-b", "t1", physical_ms=1_750_000_000_900, title="b")  # concurrent: no base
    assert (await stores.store.apply_batch(batch([first], 0, None))).conflicts == ()
    outcome = await stores.store.apply_batch(batch([second], 1, 1))
    assert outcome.decisions == 1
    (note,) = outcome.conflicts
    assert (note.entity_type, note.field, note.rule) == ("task", "title", "last-writer-wins")
    assert note.first_write_ms == 1_750_000_000_100  # the earlier write, from the stored state's history
    again = await stores.store.apply_batch(batch([second], 2, 2))
    assert (again.duplicates, again.decisions, again.conflicts) == (1, 0, ())


async def test_states_of_many_entities_are_read_at_once_and_equal_the_single_reads(stores: Stores) -> None:
    factory = EventFactory(seed=11)
    events = factory.random_task_events(30, devices=2, entities=6)
    other_tenant = EventFactory(tenant_id="tenant-b").event("dev-b", "t-elsewhere", title="not yours")
    assert (await stores.store.apply_batch(batch([*events, other_tenant], 0, None))).committed
    ids = sorted({e.entity_id for e in events})
    wanted = [ids[2], "never-written", ids[0], ids[2], "t-elsewhere"]
    states = await stores.store.entity_states("task", "tenant-a", wanted)
    assert set(states) == {ids[0], ids[2]}, "absent ids, and ids of another tenant, are left out"
    for entity_id in (ids[0], ids[2]):
        assert states[entity_id] == await stores.store.entity_state("task", "tenant-a", entity_id)
    assert await stores.store.entity_states("task", "tenant-a", []) == {}
    everything = await stores.store.entity_states("task", "tenant-a", ids)
    assert set(everything) == set(ids)
