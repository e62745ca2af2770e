"""Running projectors against the real services, and reading back what they wrote."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from consumers.kafka_source_adapter import KafkaSource
from consumers.projector import Projector
from keel.event_log import LogRecord
from keel.settings import Settings
from projections.batch import TopicPartition
from projections.pg_adapter import Pool
from projections.pg_admin_adapter import PgAdmin
from projections.sql_migrations import in_schema
from tests.support.services import kafka_security_env

KEEL = str(Path(sys.executable).parent / "keel")


def projector_env(settings: Settings) -> dict[str, str]:
    """The environment of a `keel` subprocess pointed at this test's services and names."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEEL_")}
    env.update(
        KEEL_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KEEL_REGISTRY_URL=settings.registry_url,
        KEEL_DATABASE_URL=settings.database_url,
        KEEL_TOPIC_PREFIX=settings.topic_prefix,
        KEEL_PG_SCHEMA=settings.pg_schema,
        KEEL_CONSUMER_GROUP=settings.consumer_group,
        KEEL_PROJECTOR_HEALTH_PORT="0",
        KEEL_LOG_LEVEL="INFO",
        KEEL_REGISTRY_AUTO_REGISTER="true" if settings.registry_auto_register else "false",
    )
    env.update(kafka_security_env(settings))
    return env


class Quiet:
    """A rebalance handler with nothing to do (manual assignment readers)."""

    async def on_revoked(self, partitions: object) -> None:
        del partitions

    async def on_assigned(self, partitions: object) -> None:
        del partitions


@asynccontextmanager
async def running_projector(settings: Settings) -> AsyncIterator[Projector]:
    """A projector in this process until the block ends (then drained)."""
    projector = Projector(settings, health_port=0)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop), name="test-projector")
    try:
        await asyncio.wait_for(projector.ready_event.wait(), 60)
        yield projector
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def count(pool: Pool, schema: str, sql: str) -> int:
    async with pool.acquire() as connection:
        return int(await connection.fetchval(in_schema(sql, schema)))


async def wait_applied(pool: Pool, schema: str, expected: int, timeout_s: float = 90.0) -> None:
    """Until `applied_ops` holds `expected` rows."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (got := await count(pool, schema, "SELECT count(*) FROM {schema}.applied_ops")) < expected:
        assert asyncio.get_running_loop().time() < deadline, f"only {got} of {expected} applied"
        await asyncio.sleep(0.2)
    assert got == expected


async def wait_caught_up(
    pool: Pool, settings: Settings, source_ends: dict[TopicPartition, int], timeout_s: float = 90.0
) -> None:
    """Until the stored offsets of the group reach the given end offsets."""
    topics = sorted({p.topic for p in source_ends})
    deadline = asyncio.get_running_loop().time() + timeout_s
    wanted = {p: o for p, o in source_ends.items() if o > 0}
    while (stored := await PgAdmin(pool).offsets(settings.pg_schema, settings.consumer_group, topics)) != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"stored {stored}, wanted {wanted}"
        await asyncio.sleep(0.2)


async def end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    source = KafkaSource(settings, topics, group_id=None)

    await source.start(Quiet())
    try:
        return await source.end_offsets(source.assignment())
    finally:
        await source.stop()


async def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 30.0) -> list[LogRecord]:
    """Every record of a topic (waiting for at least `expected`)."""
    source = KafkaSource(settings, [topic], group_id=None)

    await source.start(Quiet())
    records: list[LogRecord] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(records) < expected and asyncio.get_running_loop().time() < deadline:
            for batch in (await source.getmany(300, 500)).values():
                records.extend(batch)
    finally:
        await source.stop()
    return records
