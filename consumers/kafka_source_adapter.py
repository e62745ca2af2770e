"""`ConsumerSource` on aiokafka: a group member (manual commits, earliest reset) or a manual reader.

Broker quirks handled here:
- the rebalance listener runs inside aiokafka's coordinator task, which waits for it; the handler it calls
  must never wait on anything that itself waits for the rebalance (the runtime shares no lock with it);
- with `group_instance_id` set (static membership, KIP-345) a restarted member takes its partitions back
  at once instead of waiting for the old session to expire — what a crash-looping pod wants;
- `read_committed` skips aborted transactional records of partners that produce transactionally; control
  records leave gaps in offsets, so nothing here assumes consecutive offsets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaPartition
from aiokafka.errors import KafkaError

from consumers.source import RebalanceHandler, Records
from keel.errors import ConfigurationError, ServiceUnavailableError
from keel.event_log import LogRecord
from keel.kafka_adapter import client_options
from keel.settings import Settings
from projections.batch import TopicPartition

__all__ = ["KafkaSource"]


def _ours(partitions: Iterable[KafkaPartition]) -> list[TopicPartition]:
    return sorted(TopicPartition(p.topic, p.partition) for p in partitions)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc] # aiokafka ships no type information
    def __init__(self, handler: RebalanceHandler) -> None:
        self._handler = handler

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._handler.on_revoked(_ours(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._handler.on_assigned(_ours(assigned))


class KafkaSource:
    """Reads change topics; `group_id=None` assigns every partition manually (rebuilds: no group commits)."""

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        *,
        group_id: str | None,
        instance_id: str | None = None,
        session_timeout_ms: int = 10_000,
        max_poll_interval_ms: int = 300_000,
        bootstrap: str | None = None,
        fetch_max_wait_ms: int = 200,
    ) -> None:
        self._topics = tuple(topics)
        self._group_id = group_id
        self._consumer = AIOKafkaConsumer(
            **client_options(settings, bootstrap),
            group_id=group_id,
            group_instance_id=instance_id if group_id else None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 3),
            max_poll_interval_ms=max_poll_interval_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            # aiokafka hands out one partition's fetched records before the next's (as the Java client does):
            # with the 1 MiB default a slow projector served ~4,000 records of one partition per turn (R3 saw
            # partitions with backlog idle for 50 s); a smaller per-partition fetch keeps turns short.
            max_partition_fetch_bytes=settings.consumer_max_partition_fetch_bytes,
        )
        self._started = False

    async def start(self, handler: RebalanceHandler) -> None:
        """Connect; join the group, or assign every partition of the topics and tell the handler."""
        try:
            await self._consumer.start()
        except (KafkaError, OSError) as error:
            await self._consumer.stop()
            raise ServiceUnavailableError("kafka", f"consumer start: {error!r}") from error
        self._started = True
        if self._group_id is not None:
            self._consumer.subscribe(list(self._topics), listener=_Listener(handler))
            return
        # Without a group, aiokafka assigns every partition of subscribed topics itself once metadata arrives
        # (and calls no listener), so wait for that assignment and report it.
        self._consumer.subscribe(list(self._topics))
        for _ in range(200):
            assigned = self._consumer.assignment()
            if assigned and {p.topic for p in assigned} >= set(self._topics):
                break
            await asyncio.sleep(0.05)
        else:
            missing = set(self._topics) - {p.topic for p in self._consumer.assignment()}
            raise ConfigurationError(f"no partitions found for {', '.join(sorted(missing))}: do the topics exist?")
        await handler.on_assigned(_ours(self._consumer.assignment()))

    async def getmany(self, timeout_ms: int, max_records: int) -> Records:
        """Fetched records per partition."""
        try:
            fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as error:
            raise ServiceUnavailableError("kafka", f"fetch: {error!r}") from error
        result: Records = {}
        for partition, records in fetched.items():
            if records:
                result[TopicPartition(partition.topic, partition.partition)] = [
                    LogRecord(
                        r.topic,
                        r.partition,
                        r.offset,
                        r.key,
                        r.value,
                        tuple((k, bytes(v or b"")) for k, v in r.headers or ()),
                        r.timestamp,
                    )
                    for r in records
                ]
        return result

    def assignment(self) -> frozenset[TopicPartition]:
        """Owned partitions."""
        return frozenset(_ours(self._consumer.assignment()))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Fetch from `offset` next (an offset before the log start resets to the earliest)."""
        self._consumer.seek(KafkaPartition(partition.topic, partition.partition), offset)

    async def position(self, partition: TopicPartition) -> int:
        """The fetch position (resolved from the group or the log start when not yet known)."""
        try:
            # position() waits (up to the request timeout) while a position is being reset; callers only poll.
            # Not `asyncio.wait_for`: on 3.11 it can lose a cancel that arrives as the position resolves (gh-86296).
            async with asyncio.timeout(2.0):
                return int(await self._consumer.position(KafkaPartition(partition.topic, partition.partition)))
        except (KafkaError, TimeoutError) as error:  # IllegalStateError (a KafkaError): no longer owned
            raise ServiceUnavailableError("kafka", f"position of {partition}: {error!r}") from error

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Pause fetching; heartbeats continue."""
        owned = self._consumer.assignment()
        self._consumer.pause(*[p for p in (KafkaPartition(t.topic, t.partition) for t in partitions) if p in owned])

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Resume fetching."""
        owned = self._consumer.assignment()
        self._consumer.resume(*[p for p in (KafkaPartition(t.topic, t.partition) for t in partitions) if p in owned])

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit group offsets (no-op for a manual reader)."""
        if self._group_id is None or not offsets:
            return
        try:
            await self._consumer.commit({KafkaPartition(p.topic, p.partition): o for p, o in offsets.items()})
        except KafkaError as error:
            raise ServiceUnavailableError("kafka", f"commit: {error!r}") from error

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermarks (last stable offsets under read_committed)."""
        wanted = [KafkaPartition(p.topic, p.partition) for p in partitions]
        if not wanted:
            return {}
        try:
            ends = await self._consumer.end_offsets(wanted)
        except KafkaError as error:
            raise ServiceUnavailableError("kafka", f"end offsets: {error!r}") from error
        return {TopicPartition(p.topic, p.partition): int(o) for p, o in ends.items()}

    async def stop(self) -> None:
        """Leave the group (a static member just disconnects) and close."""
        if self._started:
            self._started = False
            await self._consumer.stop()
