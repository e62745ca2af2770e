"""The state relay on fakes: one record per changed entity, cursor after the ack, snapshots past the horizon."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import fastavro
import pytest

from consumers.state_relay import StateEncoder, StateRelay, state_key
from keel.errors import ServiceUnavailableError
from keel.event_log import InMemoryLog, InMemoryLogWriter
from keel.settings import Settings
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.entity_tables import entity_tables
from projections.outbox import START, OutboxEntry, OutboxKind
from projections.state_feed import InMemoryStateFeed
from projections.store import InMemoryProjectionStore
from projections.topics import state_topic
from schemas.catalog import default_catalog
from schemas.codec import to_payload_form, unframe
from schemas.envelope import ChangeEvent, Op
from schemas.registry import InMemorySchemaRegistry
from tests.consumers.helpers import EventFactory

SETTINGS = Settings(topic_prefix="k")
P0 = TopicPartition("k.task.changes", 0)


class RelayCrashError(Exception):
    """The relay dies between Kafka's ack and the cursor store."""


class Rig:
    """A relay over fakes, and helpers to write changes and read the state topics back."""

    def __init__(self) -> None:
        self.store = InMemoryProjectionStore()
        self.feed = InMemoryStateFeed(self.store)
        self.log = InMemoryLog()
        for entity in default_catalog().entities():
            self.log.create_topic(state_topic(SETTINGS, entity))
        self.registry = InMemorySchemaRegistry()
        self.offset = 0

    def relay(self, *, page_size: int = 500, crash_after: int | None = None) -> StateRelay:
        produced = 0

        async def after_produce() -> None:
            nonlocal produced
            produced += 1
            if crash_after is not None and produced >= crash_after:
                raise RelayCrashError

        encoder = StateEncoder(self.registry, lambda entity: state_topic(SETTINGS, entity))
        return StateRelay(
            self.feed,
            self.store,
            InMemoryLogWriter(self.log),
            encoder,
            page_size=page_size,
            after_produce=after_produce,
        )

    async def apply(self, events: list[ChangeEvent]) -> None:
        sourced = tuple(SourcedEvent(e, SourcePosition(P0.topic, 0, self.offset + i), 1) for i, e in enumerate(events))
        advance = OffsetAdvance(P0, self.offset or None, self.offset + len(events))
        assert (await self.store.apply_batch(ProjectionBatch("g", (advance,), sourced))).committed
        self.offset += len(events)

    async def records(self, entity: str = "task") -> list[tuple[bytes, dict[str, Any], dict[str, bytes]]]:
        """(key, decoded value, headers) of every record of a state topic, per partition in order."""
        out = []
        for partition in self.log.topics[state_topic(SETTINGS, entity)]:
            for record in partition:
                schema_id, body = unframe(record.value)
                schema = fastavro.parse_schema(json.loads(await self.registry.get_schema(schema_id)))
                value = to_payload_form(fastavro.schemaless_reader(io.BytesIO(bytes(body)), schema))  # datetimes → ms
                assert record.key is not None
                out.append((record.key, value, dict(record.headers)))
        return out

    async def last_by_key(self, entity: str = "task") -> dict[bytes, dict[str, Any]]:
        return {key: value for key, value, _ in await self.records(entity)}


async def drain(relay: StateRelay) -> None:
    while await relay.step():
        pass


async def test_one_record_per_changed_entity_with_its_merged_state() -> None:
    rig = Rig()
    factory = EventFactory()
    await rig.apply(
        [
            factory.event("dev-a", "t1", title="from a", physical_ms=2_000, priority=1),
            factory.event("dev-b", "t1", title="from b", physical_ms=1_000),  # loses the title conflict
            factory.event("dev-b", "t1", title="b again", physical_ms=1_500),  # still older than a's
            factory.event("dev-a", "t2", title="doomed"),
            factory.event("dev-a", "t1", tenant_id="tenant-b", title="other tenant"),
        ]
    )
    await rig.apply([factory.event("dev-a", "t2", op=Op.DELETE)])
    relay = rig.relay()
    await drain(relay)

    records = await rig.records()
    assert sorted(key for key, _, _ in records) == [b"tenant-a/t1", b"tenant-a/t2", b"tenant-b/t1"]  # one per entity
    last = await rig.last_by_key()
    defaults = entity_tables()["task"].defaults()
    t1 = last[state_key("tenant-a", "t1")]
    assert t1["state"] == {**defaults, "title": "from a", "priority": 1}
    assert (t1["deleted"], t1["entity_type"], t1["tenant_id"], t1["schema_version"]) == (False, "task", "tenant-a", 3)
    assert t1["hlc"] == {"physical_ms": 2_000, "logical": 0, "node": "dev-a"}
    assert t1["last_device_id"] == "dev-a"
    t2 = last[state_key("tenant-a", "t2")]
    assert (t2["deleted"], t2["state"]) == (True, None)
    assert {h["keel-tenant"] for _, _, h in records} == {b"tenant-a", b"tenant-b"}
    assert await rig.feed.load_cursor(relay.name) == relay.cursor
    assert await relay.step() == 0  # nothing new


async def test_a_crash_between_ack_and_cursor_store_resends_and_loses_nothing() -> None:
    rig = Rig()
    factory = EventFactory(seed=4)
    events = factory.random_task_events(80, devices=3, entities=12)
    await rig.apply(events[:40])
    await rig.apply(events[40:])
    crashed = rig.relay(page_size=30, crash_after=2)
    with pytest.raises(RelayCrashError):
        await drain(crashed)
    stored = await rig.feed.load_cursor(crashed.name)
    assert stored is not None
    sent_before_restart = len(await rig.records())
    assert sent_before_restart > 0
    assert (await rig.feed.read(stored)).changes  # the second page was acked by Kafka but its cursor not stored

    restarted = rig.relay(page_size=30)
    await drain(restarted)
    last = await rig.last_by_key()
    defaults = entity_tables()["task"].defaults()
    expected = {state_key(t, e): s.visible(defaults) for (_, t, e), s in rig.store.states.items()}
    assert {key: value["state"] for key, value in last.items()} == expected
    assert len(await rig.records()) > sent_before_restart  # the unstored page went out again: duplicates allowed


async def test_a_cursor_below_the_prune_horizon_republishes_every_state() -> None:
    rig = Rig()
    factory = EventFactory(seed=5)
    await rig.apply([factory.event("dev-a", f"t{i}", title=str(i)) for i in range(5)])
    page = await rig.feed.read(START)
    await rig.store.outbox.acknowledge("tenant-a", "dev-a", page.next_cursor.encode())
    await rig.store.outbox.prune("tenant-a")  # devices are done; the relay never read these rows

    relay = rig.relay(page_size=2)
    assert await relay.step() == 5
    assert relay.stats.snapshots == 1
    assert {value["source_cursor"].split(":")[0] for value in (await rig.last_by_key()).values()} == {"snapshot"}
    await rig.apply([factory.event("dev-a", "t9", title="after")])
    await drain(relay)
    assert len(await rig.last_by_key()) == 6
    assert relay.stats.snapshots == 1


async def test_a_rebuild_swap_republishes_the_tenants_states() -> None:
    rig = Rig()
    factory = EventFactory(seed=6)
    await rig.apply([factory.event("dev-a", f"t{i}", title=str(i)) for i in range(3)])
    relay = rig.relay()
    await drain(relay)
    rig.store.outbox.append(
        [OutboxEntry("tenant-a", None, OutboxKind.RESYNC, None, None, None, {"entity_types": ["task"]})]
    )
    assert await relay.step() == 3
    assert relay.stats.resyncs == 1


async def test_an_outage_is_waited_out_without_moving_the_cursor() -> None:
    rig = Rig()
    await rig.apply([EventFactory().event("dev-a", "t1", title="x")])
    rig.log.available = False
    relay = rig.relay()
    with pytest.raises(ServiceUnavailableError):
        await relay.step()
    assert await rig.feed.load_cursor(relay.name) is None
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop, poll_s=0.01))
    await asyncio.sleep(0.05)
    assert relay.waiting_on == "ServiceUnavailableError"
    rig.log.available = True
    for _ in range(100):
        if await rig.records():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert [key for key, _, _ in await rig.records()] == [b"tenant-a/t1"]
    assert relay.waiting_on is None
