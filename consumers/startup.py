"""Start-up shared by the consumer-side services (projector, state relay): wait out what is not there yet.

Each dependency is opened in order — PostgreSQL pool, SQL migrations, topics, registry client, producer —
and a transient failure is retried with backoff until it succeeds or `stop` is set, so a service started
before its stack simply waits instead of crashing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TypeVar

from keel.backoff import Backoff
from keel.errors import TransientError
from keel.kafka_adapter import AioKafkaLogWriter, TopicSpec, ensure_topics
from keel.logging import get_logger
from keel.settings import Settings
from projections.pg_adapter import Pool, connect_pool
from projections.sql_migrator_adapter import migrate
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["Backbone", "open_backbone", "until_available"]

_log = get_logger("startup")
T = TypeVar("T")


async def until_available(what: str, operation: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T | None:
    """Run `operation` until it stops failing transiently; None if `stop` is set first."""
    backoff = Backoff(0.2, 5.0)
    while not stop.is_set():
        try:
            return await operation()
        except TransientError as error:
            delay = backoff.next_delay()
            _log.warning("dependency unavailable at start", what=what, error=str(error), delay_s=round(delay, 2))
            # Not `asyncio.wait_for`: on 3.11 it swallows a cancel arriving as `stop` is set (CPython gh-86296).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
    return None


@dataclass(frozen=True)
class Backbone:
    """What a consumer-side service runs on, opened and registered for closing on the caller's exit stack."""

    pool: Pool
    registry: ConfluentSchemaRegistry
    writer: AioKafkaLogWriter


async def open_backbone(
    stack: AsyncExitStack,
    settings: Settings,
    stop: asyncio.Event,
    *,
    topics: Sequence[TopicSpec],
    pool_size: int,
    application_name: str,
) -> Backbone | None:
    """Open pool, migrations, `topics`, registry client and producer in order; None if `stop` came first."""

    async def open_pool() -> Pool:
        return await connect_pool(settings.database_url, max_size=pool_size, application_name=application_name)

    pool = await until_available("postgresql", open_pool, stop)
    if pool is None:
        return None
    stack.push_async_callback(pool.close)
    if await until_available("sql migrations", lambda: migrate(pool, settings.pg_schema), stop) is None:
        return None
    if await until_available("kafka topics", lambda: ensure_topics(settings, topics), stop) is None:
        return None
    registry = ConfluentSchemaRegistry(settings.registry_url)
    stack.push_async_callback(registry.close)
    writer = AioKafkaLogWriter(settings)

    async def start_writer() -> bool:
        await writer.start()
        return True

    if await until_available("kafka producer", start_writer, stop) is None:
        return None
    stack.push_async_callback(writer.stop)
    return Backbone(pool, registry, writer)
