"""One contract, two sources: the in-memory group member and the aiokafka one fetch, seek and pause alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from consumers.kafka_source_adapter import KafkaSource
from consumers.source import ConsumerSource, InMemoryConsumerSource, InMemoryGroup
from keel.event_log import InMemoryLog, InMemoryLogWriter, LogRecord, LogWriter, OutgoingRecord
from keel.kafka_adapter import AioKafkaLogWriter, TopicSpec, ensure_topics
from projections.batch import TopicPartition
from tests.support.naming import unique
from tests.support.services import Services


@dataclass
class Handler:
    assigned: list[TopicPartition] = field(default_factory=list)
    revoked: list[TopicPartition] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self.revoked.extend(partitions)

    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        self.assigned.extend(partitions)
        self.event.set()


@dataclass
class Rig:
    source: ConsumerSource
    writer: LogWriter
    topic: str


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    topic = unique("src")
    if request.param == "fake":
        log = InMemoryLog()
        log.create_topic(topic, partitions=2)
        yield Rig(InMemoryConsumerSource(log, [topic], InMemoryGroup(log, (topic,))), InMemoryLogWriter(log), topic)
        return
    services: Services = request.getfixturevalue("services")
    settings = services.settings()
    await ensure_topics(settings, [TopicSpec(topic, 2, 1)])
    writer = AioKafkaLogWriter(settings)
    await writer.start()
    source = KafkaSource(settings, [topic], group_id=unique("g"), session_timeout_ms=6_000)
    try:
        yield Rig(source, writer, topic)
    finally:
        await source.stop()
        await writer.stop()


async def fetch(source: ConsumerSource, want: int, timeout_s: float = 20.0) -> dict[TopicPartition, list[LogRecord]]:
    got: dict[TopicPartition, list[LogRecord]] = {}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while sum(len(v) for v in got.values()) < want and asyncio.get_running_loop().time() < deadline:
        for partition, records in (await source.getmany(200, 100)).items():
            got.setdefault(partition, []).extend(records)
    return got


async def test_a_member_gets_every_partition_and_reads_them_in_order(rig: Rig) -> None:
    await rig.writer.write([OutgoingRecord(rig.topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(20)])
    handler = Handler()
    await rig.source.start(handler)
    await asyncio.wait_for(handler.event.wait(), 30)
    partitions = [TopicPartition(rig.topic, 0), TopicPartition(rig.topic, 1)]
    assert sorted(handler.assigned) == partitions
    assert rig.source.assignment() == frozenset(partitions)
    got = await fetch(rig.source, 20)
    assert sorted(r.value for records in got.values() for r in records) == sorted(f"v{i}".encode() for i in range(20))
    for records in got.values():
        assert [r.offset for r in records] == list(range(len(records)))
    ends = await rig.source.end_offsets(partitions)
    assert {p: len(got.get(p, [])) for p in partitions} == ends
    for partition in partitions:
        assert await rig.source.position(partition) == ends[partition]


async def test_seek_pause_resume_and_commit(rig: Rig) -> None:
    await rig.writer.write([OutgoingRecord(rig.topic, b"same-key", f"v{i}".encode()) for i in range(6)])
    handler = Handler()
    await rig.source.start(handler)
    await asyncio.wait_for(handler.event.wait(), 30)
    first = await fetch(rig.source, 6)
    ((partition, records),) = first.items()
    rig.source.seek(partition, 4)
    again = await fetch(rig.source, 2)
    assert [r.value for r in again[partition]] == [b"v4", b"v5"]
    rig.source.pause([partition])
    await rig.writer.write([OutgoingRecord(rig.topic, b"same-key", b"v6")])
    assert await rig.source.getmany(300, 10) == {}
    rig.source.resume([partition])
    assert [r.value for r in (await fetch(rig.source, 1))[partition]] == [b"v6"]
    await rig.source.commit({partition: 7})
    assert len(records) == 6


async def test_a_deep_backlog_on_one_partition_does_not_hold_the_other_back(rig: Rig) -> None:
    # Both partitions deep (~4,000 records of ~200 bytes each, ~0.9 MB): while both have backlog, neither is
    # served for long stretches alone. The 1 MiB aiokafka default would hand out a whole partition per turn.
    # Written 100 at a time, as a gateway writes: a broker returns whole producer batches, so a single bulk
    # write (one 256 KiB batch per partition) could not be split finer than that.
    body = b"x" * 200
    for chunk in range(80):
        keys = range(chunk * 100, chunk * 100 + 100)
        await rig.writer.write([OutgoingRecord(rig.topic, f"key-{i}".encode(), body) for i in keys])
    handler = Handler()
    await rig.source.start(handler)
    await asyncio.wait_for(handler.event.wait(), 30)
    totals = await rig.source.end_offsets(rig.source.assignment())
    assert min(totals.values()) > 3_000
    order: list[TopicPartition] = []
    deadline = asyncio.get_running_loop().time() + 60
    while len(order) < sum(totals.values()) and asyncio.get_running_loop().time() < deadline:
        for partition, records in (await rig.source.getmany(200, 100)).items():
            order.extend([partition] * len(records))
    assert len(order) == sum(totals.values())
    seen = dict.fromkeys(totals, 0)
    longest = run = 0
    previous: TopicPartition | None = None
    for partition in order:
        if any(seen[p] == totals[p] for p in totals):
            break  # one partition is drained: from here on the other is rightly served alone
        run = run + 1 if partition == previous else 1
        previous = partition
        longest = max(longest, run)
        seen[partition] += 1
    assert longest <= 1_500, f"one partition was served {longest} records in a row while the other waited"
