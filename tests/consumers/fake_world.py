"""An in-memory world for runtime tests: log, registry, store and runtimes wired like the real projector."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from consumers.dead_letter import DeadLetterQueue
from consumers.decoder import EventDecoder, entity_of_topic
from consumers.runtime import ConsumerRuntime, RuntimeConfig
from consumers.source import InMemoryConsumerSource, InMemoryGroup
from keel.event_log import InMemoryLog, InMemoryLogWriter
from projections.outbox import OutboxKind
from projections.store import InMemoryProjectionStore
from schemas.domain_migrations import build_registry
from schemas.envelope import ChangeEvent
from schemas.event_encoder import EventEncoder
from schemas.registry import InMemorySchemaRegistry
from tests.consumers.helpers import write_events

TOPIC = "k.task.changes"
DLQ = "k.dlq"


@dataclass
class World:
    log: InMemoryLog = field(default_factory=InMemoryLog)
    registry: InMemorySchemaRegistry = field(default_factory=InMemorySchemaRegistry)
    store: InMemoryProjectionStore = field(default_factory=InMemoryProjectionStore)
    group: InMemoryGroup | None = None

    def __post_init__(self) -> None:
        self.log.create_topic(TOPIC, partitions=3)
        self.log.create_topic(DLQ, partitions=1)
        self.group = InMemoryGroup(self.log, (TOPIC,))
        self.writer = InMemoryLogWriter(self.log)
        self.encoder = EventEncoder(self.registry, lambda e: f"k.{e}.changes", auto_register=True)

    def runtime(self, max_records: int = 7) -> ConsumerRuntime:
        decoder = EventDecoder(self.registry, build_registry(disabled=()), entity_of_topic("k"))
        source = InMemoryConsumerSource(self.log, [TOPIC], self.group)
        config = RuntimeConfig(
            "g", max_records=max_records, poll_timeout_ms=10, backoff_base_s=0.01, backoff_cap_s=0.05
        )
        return ConsumerRuntime(source, self.store, decoder, DeadLetterQueue(self.writer, DLQ), config)

    async def produce(self, events: Sequence[ChangeEvent]) -> None:
        await write_events(self.writer, self.encoder, events)

    def dead_letters(self) -> list[dict[str, str]]:
        return [{k: v.decode() for k, v in r.headers} for r in self.log.read(DLQ, 0, 0, 1_000)]

    def change_rows(self) -> list[str]:
        return [r.entry.event_id or "" for r in self.store.outbox.rows if r.entry.kind is OutboxKind.CHANGE]


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
