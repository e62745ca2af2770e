"""One contract, two signal sources (the in-memory fake and PostgreSQL LISTEN/NOTIFY): a committed batch
signals each tenant whose outbox grew, a lost connection comes back by itself and says so."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from keel.backoff import Backoff
from producers.gateway.outbox_signals import InMemoryOutboxSignals, OutboxSignals
from producers.gateway.outbox_signals_pg_adapter import PgOutboxSignals
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.outbox import outbox_channel
from projections.pg_store_adapter import PgProjectionStore
from projections.store import InMemoryProjectionStore, ProjectionStore
from schemas.envelope import ChangeEvent
from tests.consumers.helpers import EventFactory
from tests.producers.gateway.pg import gateway_pool
from tests.support.services import Services

TOPIC = "k.task.changes"


@dataclass
class Received:
    """What a signal source delivered."""

    grown: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_grown(self, tenant_id: str) -> None:
        self.grown[tenant_id] += 1
        self.changed.set()

    def on_connected(self) -> None:
        self.connections += 1
        self.changed.set()

    async def until(self, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not check():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Harness:
    store: ProjectionStore
    signals: OutboxSignals
    lose_connection: Callable[[], Awaitable[None]]


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "fake":
        store = InMemoryProjectionStore()
        fake = InMemoryOutboxSignals(store.outbox)

        async def drop_and_restore() -> None:
            fake.available = False
            asyncio.get_running_loop().call_later(0.05, setattr, fake, "available", True)

        yield Harness(store, fake, drop_and_restore)
        await fake.stop()
        return
    services: Services = request.getfixturevalue("services")
    async with gateway_pool(request) as (pool, schema):
        real = PgOutboxSignals(
            services.database_url, schema, probe_every_s=0.5, probe_timeout_s=1.0, backoff=Backoff(0.01, 0.1)
        )

        async def terminate_backend() -> None:
            pid = real.server_pid
            assert pid is not None
            assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)

        try:
            yield Harness(PgProjectionStore(pool, schema), real, terminate_backend)
        finally:
            await real.stop()


def batch(events: list[ChangeEvent], start: int, expected: int | None) -> ProjectionBatch:
    sourced = tuple(SourcedEvent(e, SourcePosition(TOPIC, 0, start + i), 1) for i, e in enumerate(events))
    return ProjectionBatch("g", (OffsetAdvance(TopicPartition(TOPIC, 0), expected, start + len(events)),), sourced)


async def _listening(harness: Harness) -> Received:
    received = Received()
    await harness.signals.start(received.on_grown, received.on_connected)
    await received.until(lambda: received.connections == 1 and harness.signals.is_listening)
    return received


async def test_a_committed_batch_signals_each_grown_tenant_once(harness: Harness) -> None:
    received = await _listening(harness)
    acme, globex = EventFactory(tenant_id="acme"), EventFactory(tenant_id="globex")
    events = [acme.event("phone", "t-1", title="a"), acme.event("phone", "t-2", title="b")]
    events.append(globex.event("laptop", "t-9", title="c"))
    assert (await harness.store.apply_batch(batch(events, 0, None))).committed
    await received.until(lambda: sum(received.grown.values()) >= 2)
    await asyncio.sleep(0.1)  # nothing more arrives
    assert received.grown == Counter({"acme": 1, "globex": 1})


async def test_a_lost_connection_comes_back_by_itself_and_says_so(harness: Harness) -> None:
    received = await _listening(harness)
    await harness.lose_connection()
    await received.until(lambda: received.connections == 2 and harness.signals.is_listening)
    factory = EventFactory(tenant_id="acme")
    assert (await harness.store.apply_batch(batch([factory.event("phone", "t-1", title="a")], 0, None))).committed
    await received.until(lambda: received.grown["acme"] == 1)


async def test_stop_ends_the_signals(harness: Harness) -> None:
    received = await _listening(harness)
    await harness.signals.stop()
    assert not harness.signals.is_listening
    factory = EventFactory(tenant_id="acme")
    assert (await harness.store.apply_batch(batch([factory.event("phone", "t-1", title="a")], 0, None))).committed
    await asyncio.sleep(0.2)
    assert received.grown == Counter()


@pytest.mark.integration
async def test_a_transaction_that_rolls_back_signals_nothing(
    request: pytest.FixtureRequest, services: Services
) -> None:
    async with gateway_pool(request) as (pool, schema):
        signals = PgOutboxSignals(services.database_url, schema)
        received = Received()
        await signals.start(received.on_grown, received.on_connected)
        try:
            await received.until(lambda: signals.is_listening)

            def crash() -> None:
                raise RuntimeError("the process died before COMMIT")

            failing = PgProjectionStore(pool, schema, before_commit=crash)
            factory = EventFactory(tenant_id="acme")
            with pytest.raises(RuntimeError):
                await failing.apply_batch(batch([factory.event("phone", "t-1", title="a")], 0, None))
            await asyncio.sleep(0.3)
            assert received.grown == Counter(), "notifications are delivered at commit only"
            again = PgProjectionStore(pool, schema)
            assert (await again.apply_batch(batch([factory.event("phone", "t-1", title="a")], 0, None))).committed
            await received.until(lambda: received.grown["acme"] == 1)
        finally:
            await signals.stop()


def test_channel_names_fit_postgresql_identifiers() -> None:
    assert outbox_channel("keel") == "keel_outbox_keel"
    long_schema = "s" * 63
    assert len(outbox_channel(long_schema)) <= 63
    assert outbox_channel(long_schema) != outbox_channel("s" * 62 + "t"), "distinct schemas, distinct channels"
