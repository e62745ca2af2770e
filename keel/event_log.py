"""The event-log port: appending records to Kafka-like partitioned topics, and an in-memory log.

The real adapter is `keel/kafka_adapter.py` (aiokafka, idempotent, acks=all). `InMemoryLog` is the fake
used by unit tests and the stateful model; both pass tests/keel/test_event_log_contract.py.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from keel.errors import ConfigurationError, ServiceUnavailableError

__all__ = ["InMemoryLog", "InMemoryLogWriter", "LogRecord", "LogWriter", "OutgoingRecord", "RecordPosition"]


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """A record to append: topic, key (partitioning), value and headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class RecordPosition:
    """Where the log stored an acknowledged record."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A stored record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


class LogWriter(Protocol):
    """Appends batches; returns only once every record is durably acknowledged (acks=all)."""

    async def start(self) -> None:
        """Connect."""
        ...

    async def write(self, records: Sequence[OutgoingRecord]) -> list[RecordPosition]:
        """Append in order per key; positions in input order. ServiceUnavailableError if not acknowledged."""
        ...

    async def stop(self) -> None:
        """Flush and disconnect."""
        ...


@dataclass
class InMemoryLog:
    """Topics of partitions of records, in memory; `available=False` simulates an outage."""

    topics: dict[str, list[list[LogRecord]]] = field(default_factory=dict)
    available: bool = True

    def create_topic(self, name: str, partitions: int = 3) -> None:
        """Create a topic (idempotent)."""
        self.topics.setdefault(name, [[] for _ in range(partitions)])

    def partition_for(self, topic: str, key: bytes | None) -> int:
        """Stable partition of a key (CRC32; the real log uses Kafka's murmur2, tests never depend on which)."""
        partitions = len(self._topic(topic))
        return zlib.crc32(key or b"") % partitions

    def _topic(self, topic: str) -> list[list[LogRecord]]:
        if topic not in self.topics:
            raise ConfigurationError(f"topic {topic} does not exist")
        return self.topics[topic]

    def append(self, record: OutgoingRecord) -> RecordPosition:
        """Store one record."""
        if not self.available:
            raise ServiceUnavailableError("kafka", "in-memory log switched off")
        partition = self.partition_for(record.topic, record.key)
        log = self._topic(record.topic)[partition]
        stored = LogRecord(
            record.topic, partition, len(log), record.key, record.value, record.headers, time.time_ns() // 1_000_000
        )
        log.append(stored)
        return RecordPosition(record.topic, partition, stored.offset)

    def read(self, topic: str, partition: int, offset: int, limit: int = 500) -> list[LogRecord]:
        """Records of one partition from `offset`."""
        return self._topic(topic)[partition][offset : offset + limit]

    def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record of a partition will get."""
        return len(self._topic(topic)[partition])


class InMemoryLogWriter:
    """`LogWriter` on an `InMemoryLog`."""

    def __init__(self, log: InMemoryLog) -> None:
        self.log = log

    async def start(self) -> None:
        """Nothing to connect."""

    async def write(self, records: Sequence[OutgoingRecord]) -> list[RecordPosition]:
        """Append every record (all or, on an outage, raise before any)."""
        await asyncio.sleep(0)
        if not self.log.available:
            raise ServiceUnavailableError("kafka", "in-memory log switched off")
        return [self.log.append(record) for record in records]

    async def stop(self) -> None:
        """Nothing to flush."""
