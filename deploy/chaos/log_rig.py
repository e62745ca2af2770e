"""What every projector scenario needs: the run's topics and schema, a registry, an acks=all writer, a workload.

`open_log_rig` creates the change topics and the DLQ (`consumers.projector.topic_specs`), migrates the
run's schema, and opens the clients; they close with the run. `verdict` runs the checker over everything
the rig wrote.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from consumers.projector import change_topics, topic_specs
from deploy.chaos.context import ChaosRun
from deploy.chaos.verdict import Verdict, judge
from deploy.chaos.workload import LogProducer, SyntheticWorkload
from keel.kafka_adapter import AioKafkaLogWriter, ensure_topics
from keel.settings import Settings
from projections.pg_adapter import Pool
from projections.sql_migrator_adapter import migrate
from schemas.envelope import ChangeEvent
from schemas.event_encoder import EventEncoder
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["LogRig", "open_log_rig"]


@dataclass
class LogRig:
    """Topics, schema and clients of a projector scenario."""

    settings: Settings
    topics: list[str]
    pool: Pool
    registry: ConfluentSchemaRegistry
    writer: AioKafkaLogWriter
    producer: LogProducer
    workload: SyntheticWorkload
    # Drawing events and appending them happen under one lock: a device's seqs must reach each partition in
    # order (the gateway's ledger lock guarantees it for real devices), even with several writing tasks.
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    held_back: list[ChangeEvent] = field(default_factory=list)  # drawn but not written yet (written next)

    async def write_next(self, count: int) -> list[ChangeEvent]:
        """Draw the workload's next `count` events and append them (plus any held back), in seq order."""
        async with self.writing:
            events = [*self.held_back, *self.workload.events(count)]
            self.held_back.clear()
            await self.producer.write(events)
        return events

    @property
    def application_name(self) -> str:
        """How the run's projectors name their PostgreSQL sessions (`pg_stat_activity.application_name`)."""
        return f"keel-projector {self.settings.consumer_group}"[:63]

    async def verdict(self) -> Verdict:
        """The checker's verdict over the log, the projection and every op the log acknowledged."""
        return await judge(self.settings, self.pool, self.registry, acknowledged=self.producer.acknowledged)


async def open_log_rig(
    run: ChaosRun, *, settings: Settings | None = None, workload: SyntheticWorkload | None = None
) -> LogRig:
    """Create the run's topics and schema and open the clients (closed with the run)."""
    chosen = settings or run.settings
    await ensure_topics(chosen, topic_specs(chosen))
    pool = await run.pool(dsn=chosen.database_url)  # R5 at full size points a rig at a server of its own
    await migrate(pool, chosen.pg_schema)
    registry = ConfluentSchemaRegistry(chosen.registry_url)
    run.on_cleanup(registry.close)
    writer = AioKafkaLogWriter(chosen, linger_ms=20)
    await writer.start()
    run.on_cleanup(writer.stop)
    encoder = EventEncoder(registry, chosen.topic_for, auto_register=True)
    return LogRig(
        chosen,
        change_topics(chosen),
        pool,
        registry,
        writer,
        LogProducer(writer, encoder),
        workload or SyntheticWorkload(run.seed, entities_per_tenant=1_000),
    )
