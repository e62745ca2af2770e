"""The projector service: change topics → PostgreSQL projections, with a health endpoint and a clean drain.

Start-up order: PostgreSQL (pool, SQL migrations), Kafka topics (change topics with infinite retention —
the log is the source of truth for rebuilds — and the DLQ), the registry client, the DLQ producer, then the
supervised consumer and the health endpoint. Every dependency that is down at start is waited for with
backoff. SIGTERM or SIGINT drains: the batch in flight commits (or is dropped uncommitted), the member
leaves its group, connections close; a second signal cancels at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from contextlib import AsyncExitStack
from typing import TypeVar

from consumers.checkpointer import periodic_checkpoints
from consumers.dead_letter import DeadLetterQueue
from consumers.decoder import EventDecoder, entity_of_topic
from consumers.failpoints import Failpoints
from consumers.health import HealthReport, HealthServer
from consumers.kafka_source_adapter import KafkaSource
from consumers.runtime import ConsumerRuntime, RuntimeConfig
from consumers.signature_check import signature_check
from consumers.startup import open_backbone
from consumers.watchdog import Supervisor
from keel.errors import KeelError
from keel.lifecycle import State
from keel.logging import get_logger
from keel.settings import Settings
from keel.telemetry import configure_telemetry, observe
from projections.batch import TopicPartition
from projections.pg_store_adapter import PgProjectionStore
from projections.topics import change_topics, topic_specs  # shared with the gateway; re-exported
from schemas.catalog import Catalog, default_catalog
from schemas.domain_migrations import build_registry, configured_disabled_migrations
from schemas.migrations import MigrationRegistry

__all__ = ["Projector", "change_topics", "migration_registry", "serve_projector", "topic_specs"]

_log = get_logger("projector")
T = TypeVar("T")
DRAIN_TIMEOUT_S = 30.0
LAG_SAMPLE_S = 5.0


def migration_registry(settings: Settings, catalog: Catalog | None = None) -> MigrationRegistry:
    """The domain's migration steps minus those disabled by these settings or by schemas/subjects.toml."""
    disabled = dict.fromkeys([*settings.disabled_migrations, *configured_disabled_migrations(catalog)])
    return build_registry(catalog, disabled=tuple(disabled))


class Projector:
    """One projector process."""

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: Catalog | None = None,
        health_port: int | None = None,
        lag_sample_s: float = LAG_SAMPLE_S,
    ) -> None:
        self.settings = settings
        self.catalog = catalog or default_catalog()
        self.health = HealthServer(
            self.report,
            host=settings.projector_health_host,
            port=settings.projector_health_port if health_port is None else health_port,
        )
        self.supervisor: Supervisor | None = None
        self.started_at = time.monotonic()
        self.ready_event = asyncio.Event()
        self.lag: dict[TopicPartition, int] = {}  # records behind the log end, per owned partition (sampled)
        self.lag_sample_s = lag_sample_s
        self.migrations: MigrationRegistry | None = None
        observe(
            "keel_projector_lag_records",
            self._lag_observations,
            description="Records between a partition's end and the projector's committed position (sampled)",
        )
        observe(
            "keel_migrations_performed_total",
            self._migration_observations,
            kind="counter",
            description="Schema migration steps applied to events, by step (MigrationRegistry.performed)",
        )

    def _lag_observations(self) -> list[tuple[float, dict[str, str]]]:
        return [(float(lag), {"topic": p.topic, "partition": str(p.partition)}) for p, lag in sorted(self.lag.items())]

    def _migration_observations(self) -> list[tuple[float, dict[str, str]]]:
        performed = self.migrations.performed if self.migrations is not None else {}
        return [(float(count), {"step": step, "service": "projector"}) for step, count in sorted(performed.items())]

    async def _sample_lag(self, stop: asyncio.Event) -> None:
        """Every few seconds: log end minus committed position of each owned partition (for /metrics, /health)."""
        while not stop.is_set():
            runtime = self.supervisor.runtime if self.supervisor else None
            if runtime is not None and runtime.lifecycle.is_running:
                try:
                    ends = await runtime.source.end_offsets(runtime.source.assignment())
                except KeelError:
                    ends = None  # the log is unreachable: keep the last sample
                if ends is not None:
                    self.lag = {
                        p: max(0, end - (runtime.positions.get(p) or 0))
                        for p, end in ends.items()
                        if p in runtime.positions
                    }
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lag_sample_s):  # not wait_for: see consumers/startup.py
                    await stop.wait()
        self.lag = {}

    def report(self) -> HealthReport:
        """Alive while the supervisor runs; ready when the consumer runs without backing off."""
        runtime = self.supervisor.runtime if self.supervisor else None
        if runtime is None:
            return HealthReport(alive=True, ready=False, details={"state": "starting"})
        state = runtime.lifecycle.state
        stats = runtime.stats
        details = {
            "state": state.value,
            "group": runtime.config.group_id,
            "partitions": {f"{p.topic}[{p.partition}]": o for p, o in sorted(runtime.positions.items())},
            "waiting_on": runtime.waiting_on,
            "restarts": self.supervisor.restarts if self.supervisor else 0,
            "batches": stats.batches,
            "applied": stats.applied,
            "duplicates": stats.duplicates,
            "decisions": stats.decisions,
            "dead_lettered": stats.dead_lettered,
            "fenced": stats.fenced,
            "transient_failures": stats.transient_failures,
            "lag": {f"{p.topic}[{p.partition}]": lag for p, lag in sorted(self.lag.items())},
            "uptime_s": round(time.monotonic() - self.started_at, 1),
        }
        alive = state is not State.FAILED
        return HealthReport(alive=alive, ready=state is State.RUNNING and runtime.waiting_on is None, details=details)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain."""
        settings = self.settings
        configure_telemetry(
            "keel-projector", settings.otel_exporter, settings.otel_endpoint, sample_ratio=settings.otel_sample_ratio
        )
        async with AsyncExitStack() as stack:
            await self.health.start()
            stack.push_async_callback(self.health.stop)

            topics = topic_specs(settings, self.catalog)
            backbone = await open_backbone(
                stack,
                settings,
                stop,
                topics=topics,
                pool_size=settings.projector_pg_pool_size,
                application_name=f"keel-projector {settings.consumer_group}",
            )
            if backbone is None:
                return
            pool, registry, writer = backbone.pool, backbone.registry, backbone.writer
            failpoints = Failpoints(settings.projector_failpoints)  # test only; none armed by default
            store = PgProjectionStore(pool, settings.pg_schema, before_commit=lambda: failpoints.hit("in-transaction"))
            self.migrations = migration_registry(settings, self.catalog)
            decoder = EventDecoder(
                registry,
                self.migrations,
                entity_of_topic(settings.topic_prefix),
                catalog=self.catalog,
                signatures=signature_check(settings, pool),
            )
            dead_letters = DeadLetterQueue(writer, settings.dlq_topic)
            config = RuntimeConfig(
                settings.consumer_group,
                max_records=settings.projector_batch_max_records,
                record_spans=settings.otel_record_spans,
            )
            topic_names = change_topics(settings, self.catalog)

            def runtime() -> ConsumerRuntime:
                source = KafkaSource(
                    settings,
                    topic_names,
                    group_id=settings.consumer_group,
                    instance_id=settings.consumer_instance_id,
                    session_timeout_ms=settings.consumer_session_timeout_ms,
                )
                return ConsumerRuntime(source, store, decoder, dead_letters, config, failpoints=failpoints)

            self.supervisor = Supervisor(runtime, stall_s=settings.projector_stall_s)
            self.ready_event.set()
            _log.info("projector running", group=settings.consumer_group, schema=settings.pg_schema, topics=topic_names)
            sampler = asyncio.create_task(self._sample_lag(stop), name="projector-lag")
            checkpointer = periodic_checkpoints(settings, pool, stop, self.catalog)  # None unless configured
            try:
                await self.supervisor.run(stop)
            finally:
                sampler.cancel()
                if checkpointer is not None:
                    checkpointer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await checkpointer
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
                self.lag = {}
        _log.info("projector stopped")


async def serve_projector(settings: Settings) -> None:
    """Run a projector until SIGTERM/SIGINT; a second signal cancels the drain."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(Projector(settings).run(stop), name="projector")

    def on_signal(name: str) -> None:
        if stop.is_set():
            _log.warning("second signal: cancelling the drain", signal=name)
            task.cancel()
            return
        _log.info("signal received: draining", signal=name, timeout_s=DRAIN_TIMEOUT_S)
        stop.set()
        loop.call_later(DRAIN_TIMEOUT_S, task.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await task
    except asyncio.CancelledError:
        _log.warning("projector cancelled before the drain finished")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
