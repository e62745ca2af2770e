"""An in-memory Keel for SDK and gateway tests: the gateway on fakes, served to devices through ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from consumers.decoder import EventDecoder, entity_of_topic
from consumers.signature_check import SignatureCheck
from keel.event_log import InMemoryLog, InMemoryLogWriter
from keel.settings import Settings
from producers.device import Device, SyncConfig
from producers.gateway.app import build_app
from producers.gateway.devices import InMemoryDeviceDirectory
from producers.gateway.gateway import Gateway, GatewayPorts
from producers.gateway.outbox_signals import InMemoryOutboxSignals
from producers.gateway.push_ledger import InMemoryPushLedger
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, TopicPartition
from projections.store import InMemoryProjectionStore
from schemas.catalog import default_catalog
from schemas.domain_migrations import default_registry
from schemas.registry import InMemorySchemaRegistry

ENROLL_SECRET = "test-enrollment-secret"
GATEWAY_URL = "http://gateway.test"
FAST = SyncConfig(
    long_poll_s=0.2,
    idle_recheck_s=0.2,
    digest_interval_s=None,
    backoff_base_s=0.01,
    backoff_cap_s=0.05,
    use_stream=False,
)


def fake_settings(**overrides: Any) -> Settings:
    """Settings for a gateway on fakes."""
    values: dict[str, Any] = {
        "topic_prefix": "unit",
        "gateway_enrollment_secret": ENROLL_SECRET,
        "gateway_outbox_poll_s": 0.02,
        "gateway_stream_heartbeat_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class FakeKeel:
    """The gateway on fakes plus a projector step that folds the log into the projection store."""

    settings: Settings
    log: InMemoryLog = field(default_factory=InMemoryLog)
    registry: InMemorySchemaRegistry = field(default_factory=lambda: InMemorySchemaRegistry("FULL_TRANSITIVE"))
    directory: InMemoryDeviceDirectory = field(default_factory=InMemoryDeviceDirectory)
    ledger: InMemoryPushLedger = field(default_factory=InMemoryPushLedger)
    store: InMemoryProjectionStore = field(default_factory=InMemoryProjectionStore)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    gateway: Gateway | None = None

    def __post_init__(self) -> None:
        for entity in default_catalog().entities():
            self.log.create_topic(self.settings.topic_for(entity))
        ports = GatewayPorts(
            directory=self.directory,
            ledger=self.ledger,
            writer=InMemoryLogWriter(self.log),
            registry=self.registry,
            outbox=self.store.outbox,
            states=self.store,
            signals=InMemoryOutboxSignals(self.store.outbox),  # as the projector's pg_notify does
        )
        self.gateway = Gateway(ports, self.settings)
        self.app = build_app(self.gateway, manage_lifecycle=False)
        self.decoder = EventDecoder(
            self.registry,
            default_registry(),
            entity_of_topic(self.settings.topic_prefix),
            signatures=SignatureCheck(self.gateway.device_keys),
        )

    @property
    def transport(self) -> httpx.ASGITransport:
        """A transport that serves requests from the app, in process."""
        return httpx.ASGITransport(app=self.app)

    async def project(self) -> int:
        """Fold every new log record into the projection store (what the projector does); events applied."""
        applied = 0
        for topic, partitions in self.log.topics.items():
            for partition, records in enumerate(partitions):
                start = self.offsets.get((topic, partition), 0)
                fresh = records[start:]
                if not fresh:
                    continue
                decoded = [await self.decoder.decode(record) for record in fresh]
                events = tuple(d for d in decoded if isinstance(d, SourcedEvent))
                advance = OffsetAdvance(
                    TopicPartition(topic, partition),
                    start if (topic, partition) in self.offsets else None,
                    start + len(fresh),
                )
                outcome = await self.store.apply_batch(ProjectionBatch("unit", (advance,), events))
                assert outcome.committed, outcome
                applied += outcome.applied
                self.offsets[(topic, partition)] = start + len(fresh)
        return applied

    def log_values(self) -> list[bytes | None]:
        """Every record value in the log."""
        return [r.value for partitions in self.log.topics.values() for records in partitions for r in records]

    async def device(
        self,
        path: Path,
        *,
        tenant_id: str = "acme",
        versions: Mapping[str, Sequence[int]] | None = None,
        config: SyncConfig | None = None,
        device_id: str | None = None,
    ) -> Device:
        """Enroll a device with a SQLite store at `path`."""
        return await Device.enroll(
            path,
            GATEWAY_URL,
            tenant_id=tenant_id,
            enrollment_secret=ENROLL_SECRET,
            versions=versions or {"task": [1, 2], "project": [1], "comment": [1]},
            device_id=device_id,
            config=config or FAST,
            transport=self.transport,
        )


@asynccontextmanager
async def fake_keel(**overrides: Any) -> AsyncIterator[FakeKeel]:
    """A started gateway on fakes."""
    keel = FakeKeel(fake_settings(**overrides))
    assert keel.gateway is not None
    await keel.gateway.start()
    try:
        yield keel
    finally:
        await keel.gateway.stop()
