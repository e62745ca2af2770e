"""The consumer-source port: a group member (or a manual reader) fetching record batches, and its fake.

The runtime never trusts the source's own positions for correctness — offsets live in PostgreSQL and every
batch commits compare-and-set — so the port stays small: join, fetch, seek, pause, best-effort commit.
Real adapter: `consumers/kafka_source_adapter.py`. Fake: `InMemoryConsumerSource` over `keel.event_log
.InMemoryLog`, with `InMemoryGroup` simulating a consumer group's rebalances. Both pass
tests/consumers/test_source_contract.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from keel.errors import ServiceUnavailableError
from keel.event_log import InMemoryLog, LogRecord
from projections.batch import TopicPartition

__all__ = ["ConsumerSource", "InMemoryConsumerSource", "InMemoryGroup", "RebalanceHandler", "Records"]

Records = dict[TopicPartition, list[LogRecord]]


class RebalanceHandler(Protocol):
    """What a source calls when its assignment changes; called from the group's own task."""

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions about to leave this member (finish or drop work on them; hold no shared lock)."""
        ...

    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions newly given to this member (seek them before fetching)."""
        ...


class ConsumerSource(Protocol):
    """A fetcher of record batches."""

    async def start(self, handler: RebalanceHandler) -> None:
        """Connect and join (or assign); ServiceUnavailableError if the log cannot be reached."""
        ...

    async def getmany(self, timeout_ms: int, max_records: int) -> Records:
        """The next records per partition (possibly none), in offset order within each partition."""
        ...

    def assignment(self) -> frozenset[TopicPartition]:
        """Partitions currently owned."""
        ...

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Fetch `partition` from `offset` next."""
        ...

    async def position(self, partition: TopicPartition) -> int:
        """The offset the next fetch of an owned partition starts from (past control records)."""
        ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop returning records of these partitions (membership stays alive)."""
        ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Undo `pause`."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record progress in the log's group offsets (lag, resumption); best effort, may raise."""
        ...

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset the next record of each partition will get."""
        ...

    async def stop(self) -> None:
        """Leave the group and disconnect."""
        ...


@dataclass
class InMemoryGroup:
    """A consumer group over an in-memory log: round-robin assignment, revoke-before-assign rebalances."""

    log: InMemoryLog
    topics: tuple[str, ...]
    members: list[InMemoryConsumerSource] = field(default_factory=list)
    committed: dict[TopicPartition, int] = field(default_factory=dict)

    def partitions(self) -> list[TopicPartition]:
        """Every partition of the group's topics."""
        return [
            TopicPartition(topic, index)
            for topic in self.topics
            for index in range(len(self.log.topics.get(topic, [])))
        ]

    async def rebalance(self) -> None:
        """Revoke everything from every member, then assign round-robin (the eager protocol)."""
        for member in self.members:
            await member.revoke_all()
        targets: dict[int, list[TopicPartition]] = {id(m): [] for m in self.members}
        for index, partition in enumerate(self.partitions()):
            if self.members:
                targets[id(self.members[index % len(self.members)])].append(partition)
        for member in self.members:
            await member.assign(targets[id(member)])

    async def join(self, member: InMemoryConsumerSource) -> None:
        """Add a member and rebalance."""
        self.members.append(member)
        await self.rebalance()

    async def leave(self, member: InMemoryConsumerSource) -> None:
        """Remove a member and rebalance."""
        self.members.remove(member)
        await self.rebalance()

    async def evict(self, member: InMemoryConsumerSource) -> None:
        """Drop a member that died without leaving (its session expired), then rebalance."""
        self.members.remove(member)
        member.forget()
        await self.rebalance()


class InMemoryConsumerSource:
    """`ConsumerSource` on an `InMemoryLog`; a member of `group`, or the owner of every partition without one."""

    def __init__(self, log: InMemoryLog, topics: Sequence[str], group: InMemoryGroup | None = None) -> None:
        self.log = log
        self.topics = tuple(topics)
        self.group = group
        self.available = True
        self.stalled = False  # a fetcher that hangs: returns nothing although records wait (watchdog tests)
        self._handler: RebalanceHandler | None = None
        self._assigned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._turn = 0
        self._committed: dict[TopicPartition, int] = group.committed if group else {}
        self.started = False

    async def start(self, handler: RebalanceHandler) -> None:
        """Join the group (or take every partition)."""
        if not self.available:
            raise ServiceUnavailableError("kafka", "in-memory source switched off")
        self._handler = handler
        self.started = True
        if self.group is not None:
            await self.group.join(self)
        else:
            await self.assign(
                [TopicPartition(t, p) for t in self.topics for p in range(len(self.log.topics.get(t, [])))]
            )

    def forget(self) -> None:
        """Lose every partition without being told (a dead member)."""
        self._assigned.clear()
        self._paused.clear()

    async def revoke_all(self) -> None:
        """Called by the group: hand back every partition."""
        revoked = sorted(self._assigned)
        if revoked and self._handler is not None:
            await self._handler.on_revoked(revoked)
        self._assigned.clear()
        self._paused.clear()

    async def assign(self, partitions: Sequence[TopicPartition]) -> None:
        """Called by the group: take partitions, positioned at the committed offset (earliest otherwise)."""
        self._assigned = set(partitions)
        for partition in partitions:
            self._positions[partition] = self._committed.get(partition, 0)
        if self._handler is not None:
            await self._handler.on_assigned(sorted(partitions))

    async def getmany(self, timeout_ms: int, max_records: int) -> Records:
        """Records from the current positions."""
        if not self.available:
            raise ServiceUnavailableError("kafka", "in-memory source switched off")
        result: Records = {}
        budget = max_records
        if not self.stalled:
            ready = sorted(self._assigned - self._paused)
            # Start one partition further each call, so a deep backlog never keeps the others waiting.
            self._turn = (self._turn + 1) % max(1, len(ready))
            for partition in ready[self._turn :] + ready[: self._turn]:
                if budget <= 0:
                    break
                records = self.log.read(partition.topic, partition.partition, self._positions[partition], budget)
                if records:
                    result[partition] = list(records)
                    self._positions[partition] = records[-1].offset + 1
                    budget -= len(records)
        if not result:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
        return result

    def assignment(self) -> frozenset[TopicPartition]:
        """Owned partitions."""
        return frozenset(self._assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Move a position."""
        self._positions[partition] = offset

    async def position(self, partition: TopicPartition) -> int:
        """The next fetch position."""
        await asyncio.sleep(0)
        return self._positions.get(partition, 0)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Pause partitions."""
        self._paused.update(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Resume partitions."""
        self._paused.difference_update(partitions)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store group offsets."""
        await asyncio.sleep(0)
        self._committed.update(offsets)

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """End of each partition."""
        await asyncio.sleep(0)
        return {p: self.log.end_offset(p.topic, p.partition) for p in partitions}

    async def stop(self) -> None:
        """Leave the group."""
        if self.group is not None and self in self.group.members:
            await self.group.leave(self)
        self.forget()
        self.started = False
