"""The watchdog restarts a consumer with backlog but no progress, and leaves one waiting on an outage alone."""

from __future__ import annotations

import asyncio

from consumers.runtime import ConsumerRuntime
from consumers.watchdog import Supervisor
from projections.store import InMemoryProjectionStore
from tests.consumers.fake_world import World, eventually
from tests.consumers.helpers import EventFactory


class HangingStore(InMemoryProjectionStore):
    """A store whose first batch never returns (a hung connection)."""

    def __init__(self, inner: InMemoryProjectionStore) -> None:
        super().__init__()
        self.inner = inner

    async def load_offsets(self, group_id, partitions):  # type: ignore[no-untyped-def]
        return await self.inner.load_offsets(group_id, partitions)

    async def apply_batch(self, batch):  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()


async def supervise(supervisor: Supervisor, until, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop))
    try:
        await eventually(until, timeout_s)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_wedged_fetcher_and_a_hung_batch_are_restarted() -> None:
    world = World()
    events = EventFactory().random_task_events(25)
    await world.produce(events)
    built: list[ConsumerRuntime] = []

    def factory() -> ConsumerRuntime:
        runtime = world.runtime()
        if len(built) == 0:
            runtime.source.stalled = True  # type: ignore[attr-defined] # records wait, none are fetched
        elif len(built) == 1:
            runtime.store = HangingStore(world.store)
        built.append(runtime)
        return runtime

    supervisor = Supervisor(factory, stall_s=0.3, check_every_s=0.05)
    await supervise(supervisor, lambda: len(world.change_rows()) == 25)
    assert supervisor.restarts == 2
    assert sorted(world.change_rows()) == sorted(e.event_id for e in events)


async def test_no_restart_while_waiting_on_an_unavailable_store() -> None:
    world = World()
    await world.produce(EventFactory().random_task_events(5))
    world.store.available = False
    supervisor = Supervisor(world.runtime, stall_s=0.1, check_every_s=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop))
    await asyncio.sleep(0.8)
    assert supervisor.runtime is not None
    assert supervisor.runtime.waiting_on is not None
    assert supervisor.restarts == 0
    world.store.available = True
    await eventually(lambda: len(world.change_rows()) == 5)
    stop.set()
    await task


async def test_a_probe_of_the_log_that_never_answers_does_not_hold_up_a_stop() -> None:
    world = World()
    await world.produce(EventFactory().random_task_events(5))
    probes: list[str] = []

    def factory() -> ConsumerRuntime:
        runtime = world.runtime()

        async def never_answers(partitions):  # type: ignore[no-untyped-def]
            probes.append("end_offsets")
            await asyncio.Event().wait()  # aiokafka waiting for a metadata refresh that does not come

        runtime.source.end_offsets = never_answers  # type: ignore[method-assign]
        return runtime

    supervisor = Supervisor(factory, stall_s=60.0, check_every_s=0.05)
    supervisor.watchdog.probe_timeout_s = 0.2
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop))
    await eventually(lambda: len(world.change_rows()) == 5 and bool(probes), 10)
    stop.set()
    async with asyncio.timeout(3):  # a probe without a deadline kept this waiting forever
        await task
    assert supervisor.restarts == 0, "a slow probe is not a stall"
