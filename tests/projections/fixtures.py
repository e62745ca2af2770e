"""Fixtures for projector tests against the real services: settings, pool, registry, log writer, topics."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from keel.kafka_adapter import AioKafkaLogWriter, ensure_topics
from keel.settings import Settings
from projections.outbox import OutboxReader
from projections.outbox_pg_adapter import PgOutbox
from projections.pg_adapter import Pool, connect_pool
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import in_schema
from projections.sql_migrator_adapter import migrate
from projections.store import InMemoryProjectionStore, ProjectionStore
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.support.services import Services


@pytest.fixture
def keel_settings(services: Services, topic_prefix: str, group_id: str, pg_schema: str) -> Settings:
    """Settings of this test alone: its topics, group and PostgreSQL schema."""
    return services.settings(
        topic_prefix=topic_prefix,
        pg_schema=pg_schema,
        consumer_group=group_id,
        projector_health_port=0,
        registry_auto_register=True,
        log_json=False,
    )


@pytest.fixture
async def pool(keel_settings: Settings) -> AsyncIterator[Pool]:
    """A pool on the test's database; the test's schema is migrated."""
    created = await connect_pool(keel_settings.database_url, max_size=4)
    try:
        await migrate(created, keel_settings.pg_schema)
        yield created
    finally:
        await created.close()


@pytest.fixture
async def registry(keel_settings: Settings) -> AsyncIterator[ConfluentSchemaRegistry]:
    """The real registry."""
    client = ConfluentSchemaRegistry(keel_settings.registry_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def log_writer(keel_settings: Settings) -> AsyncIterator[AioKafkaLogWriter]:
    """An acks=all producer."""
    writer = AioKafkaLogWriter(keel_settings)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.stop()


@pytest.fixture
async def change_topics(keel_settings: Settings) -> list[str]:
    """The test's change topics and DLQ, created."""
    from consumers.projector import change_topics as topics_of
    from consumers.projector import topic_specs

    await ensure_topics(keel_settings, topic_specs(keel_settings))
    return topics_of(keel_settings)


async def _nothing() -> None:
    await asyncio.sleep(0)


@dataclass
class Stores:
    """A projection store and the outbox reader over the same data."""

    store: ProjectionStore
    outbox: OutboxReader
    settle: Callable[[], Awaitable[None]] = _nothing  # until every committed feed row is readable


async def feed_settled(pool: Pool, schema: str, timeout_s: float = 30.0) -> None:
    """Until no transaction older than the newest feed row is still running anywhere on the server.

    The feed deliberately lags behind the oldest running transaction of the whole cluster (other tests'
    included), so tests that read right after writing wait for that horizon instead of racing it.
    """
    sql = in_schema(
        "SELECT coalesce(max(tx), '0'::xid8) < pg_snapshot_xmin(pg_current_snapshot()) FROM {schema}.outbox", schema
    )
    deadline = asyncio.get_running_loop().time() + timeout_s
    for _ in itertools.count():
        async with pool.acquire() as connection:
            if await connection.fetchval(sql):
                return
        assert asyncio.get_running_loop().time() < deadline, "the feed horizon did not pass the newest row"
        await asyncio.sleep(0.05)


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    """The in-memory store, and the PostgreSQL one on the test's own schema."""
    if request.param == "fake":
        fake = InMemoryProjectionStore()
        yield Stores(fake, fake.outbox)
        return
    settings = request.getfixturevalue("keel_settings")
    pool = await connect_pool(settings.database_url, max_size=2)
    try:
        await migrate(pool, settings.pg_schema)
        yield Stores(
            PgProjectionStore(pool, settings.pg_schema),
            PgOutbox(pool, settings.pg_schema),
            lambda: feed_settled(pool, settings.pg_schema),
        )
    finally:
        await pool.close()
