"""Reading a run's progress from outside its services: applied ops, stored offsets, log ends, sessions.

Scenarios watch the projector the way an operator would — through PostgreSQL (`applied_ops`,
`consumer_offsets`, `pg_stat_activity`) and the log's end offsets — never through a service's memory, since
the service may be dead at any moment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx

from consumers.kafka_source_adapter import KafkaSource
from deploy.observability.services_probe import get_with_retries
from keel.event_log import LogRecord
from keel.settings import Settings
from projections.batch import TopicPartition
from projections.pg_adapter import Pool, pg_errors
from projections.pg_admin_adapter import PgAdmin
from projections.sql_migrations import in_schema

__all__ = [
    "applied_count",
    "backlog",
    "health",
    "idle_in_transaction",
    "log_end_offsets",
    "read_records",
    "stored_offsets",
    "terminate_sessions",
    "wait_caught_up",
]


class _Unassigned:
    """A rebalance handler for a groupless reader (it owns every partition; nothing to do)."""

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Nothing to give back."""
        del partitions

    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Nothing to seek."""
        del partitions


async def read_records(settings: Settings, topics: Sequence[str], *, timeout_s: float = 60.0) -> list[LogRecord]:
    """Every record of `topics` up to their end offsets now (a groupless read from the start)."""
    source = KafkaSource(settings, topics, group_id=None)
    await source.start(_Unassigned())
    records: list[LogRecord] = []
    try:
        ends = await source.end_offsets(source.assignment())
        remaining = {p for p, end in ends.items() if end > 0}
        for partition in source.assignment():
            source.seek(partition, 0)
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {', '.join(topics)}: {len(remaining)} partitions not read to their end")
            for partition, batch in (await source.getmany(300, 1_000)).items():
                records.extend(r for r in batch if r.offset < ends[partition])
            for partition in list(remaining):
                if await source.position(partition) >= ends[partition]:
                    remaining.discard(partition)
    finally:
        await source.stop()
    return records


async def health(url: str) -> dict[str, Any]:
    """A service's health details (empty when it does not answer)."""
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            answer = (await get_with_retries(client, url)).json()  # a verdict must not hang on one slow answer
    except (httpx.HTTPError, ValueError):
        return {}
    return dict(answer.get("details", answer)) if isinstance(answer, dict) else {}


async def applied_count(pool: Pool, schema: str) -> int:
    """Rows of the projection's dedup table (ops applied)."""
    async with pg_errors("count applied ops"):
        return int(await pool.fetchval(in_schema("SELECT count(*) FROM {schema}.applied_ops", schema)))


async def stored_offsets(pool: Pool, settings: Settings, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """The group's next offsets as the projection stored them."""
    return await PgAdmin(pool).offsets(settings.pg_schema, settings.consumer_group, topics)


async def log_end_offsets(settings: Settings, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """End offsets of every partition of `topics`."""
    source = KafkaSource(settings, topics, group_id=None)
    await source.start(_Unassigned())
    try:
        return await source.end_offsets(source.assignment())
    finally:
        await source.stop()


def backlog(ends: dict[TopicPartition, int], stored: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Records between each partition's end and its stored offset (partitions with none left out)."""
    return {p: end - stored.get(p, 0) for p, end in ends.items() if end > stored.get(p, 0)}


async def wait_caught_up(
    pool: Pool, settings: Settings, topics: Sequence[str], *, timeout_s: float, every_s: float = 0.5
) -> float | None:
    """Until the stored offsets reach the log's end offsets (read once, now); seconds, or None on timeout."""
    ends = await log_end_offsets(settings, topics)
    began = time.monotonic()
    while True:
        if not backlog(ends, await stored_offsets(pool, settings, topics)):
            return time.monotonic() - began
        if time.monotonic() - began > timeout_s:
            return None
        await asyncio.sleep(every_s)


async def idle_in_transaction(pool: Pool, application_name: str) -> int:
    """Sessions of an application left idle inside a transaction."""
    async with pg_errors("read pg_stat_activity"):
        return int(
            await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                "AND state IN ('idle in transaction', 'idle in transaction (aborted)')",
                application_name,
            )
        )


async def terminate_sessions(pool: Pool, application_name: str) -> int:
    """pg_terminate_backend of every session of an application; how many were terminated."""
    async with pg_errors("terminate sessions"):
        return int(
            await pool.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND pid <> pg_backend_pid()",
                application_name,
            )
        )
