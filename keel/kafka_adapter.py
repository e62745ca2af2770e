"""The event-log port on aiokafka: an idempotent, acks=all writer, client options and topic administration."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from keel.errors import ServiceUnavailableError
from keel.event_log import OutgoingRecord, RecordPosition
from keel.settings import Settings

__all__ = ["AioKafkaLogWriter", "TopicSpec", "client_options", "ensure_topics"]


def client_options(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """Connection options shared by every aiokafka client: bootstrap, TLS and SASL from settings."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap or settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        options["ssl_context"] = ssl.create_default_context(cafile=cafile)
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


class AioKafkaLogWriter:
    """`LogWriter` on an idempotent aiokafka producer with acks=all.

    A batch is sent concurrently and awaited as a whole; `write` returns only when the broker acknowledged
    every record, so callers mark work done strictly after the ack. Idempotence (KIP-98) keeps retried
    sends from duplicating and, with max in-flight <= 5, keeps per-partition order.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: str | None = None,
        linger_ms: int = 5,
        request_timeout_ms: int = 15_000,
        max_batch_size: int = 256 * 1024,
        compression_type: str | None = None,
    ) -> None:
        self._producer = AIOKafkaProducer(
            **client_options(settings, bootstrap),
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            max_batch_size=max_batch_size,
            compression_type=compression_type,
        )
        self._started = False

    async def start(self) -> None:
        """Connect (ServiceUnavailableError when no broker answers)."""
        try:
            await self._producer.start()
        except (KafkaError, OSError) as error:
            await self._producer.stop()
            raise ServiceUnavailableError("kafka", f"producer start: {error!r}") from error
        self._started = True

    async def write(self, records: Sequence[OutgoingRecord]) -> list[RecordPosition]:
        """Send all records and wait for every acknowledgement."""
        try:
            futures = [
                await self._producer.send(r.topic, r.value, key=r.key, headers=list(r.headers) or None) for r in records
            ]
            metadata = await asyncio.gather(*futures)
        except (KafkaError, OSError) as error:
            raise ServiceUnavailableError("kafka", f"produce failed: {error!r}") from error
        return [RecordPosition(m.topic, m.partition, m.offset) for m in metadata]

    async def stop(self) -> None:
        """Flush pending sends and disconnect."""
        if self._started:
            await self._producer.stop()
            self._started = False


class TopicSpec:
    """A topic to create: partitions, replication and config."""

    def __init__(self, name: str, partitions: int, replication: int, config: dict[str, str] | None = None) -> None:
        self.name = name
        self.partitions = partitions
        self.replication = replication
        self.config = config or {}


async def ensure_topics(settings: Settings, topics: Sequence[TopicSpec], *, bootstrap: str | None = None) -> list[str]:
    """Create missing topics; names of those created. Existing topics are left as they are."""
    admin = AIOKafkaAdminClient(**client_options(settings, bootstrap))
    try:
        await admin.start()
    except (KafkaError, OSError) as error:
        await admin.close()
        raise ServiceUnavailableError("kafka", f"admin connect: {error!r}") from error
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        for spec in missing:
            try:
                await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=spec.config)]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
    except KafkaError as error:
        raise ServiceUnavailableError("kafka", f"create topics: {error!r}") from error
    finally:
        await admin.close()
    return created
