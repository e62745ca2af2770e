"""The event-log port on aiokafka: an idempotent, acks=all writer, client options, topic and group administration."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from keel.errors import ServiceUnavailableError
from keel.event_log import OutgoingRecord, RecordPosition
from keel.logging import get_logger
from keel.settings import Settings

__all__ = [
    "AioKafkaLogWriter",
    "TopicSpec",
    "client_options",
    "delete_groups",
    "delete_topics_under",
    "ensure_topics",
    "groups_named_after",
    "librdkafka_options",
]

_log = get_logger("kafka")


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


def librdkafka_options(settings: Settings, bootstrap: str | None = None) -> dict[str, str]:
    """The same connection settings for confluent-kafka (librdkafka) clients: admin tools, partners, benchmarks."""
    options = {
        "bootstrap.servers": bootstrap or settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_ssl_cafile is not None:
        options["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism:
        options["sasl.mechanism"] = settings.kafka_sasl_mechanism
        options["sasl.username"] = settings.kafka_sasl_username or ""
        options["sasl.password"] = settings.kafka_sasl_password or ""
    return options


def groups_named_after(names: Iterable[str], listed: Iterable[str]) -> list[str]:
    """The groups among `listed` that are one of `names` or `<name>-…` (a name that merely starts alike is not)."""
    stems = tuple(names)
    return sorted(g for g in listed if any(g == n or g.startswith(f"{n}-") for n in stems))


def delete_groups(settings: Settings, names: Iterable[str], *, timeout_s: float = 10.0) -> list[str]:
    """Delete the consumer groups named after `names` (`groups_named_after`); the ids deleted (blocking).

    Run it in a thread. aiokafka has no DeleteGroups, confluent-kafka's admin client has. A group that still
    has members (one SIGKILLed inside its session timeout) or a broker that does not answer is logged and left
    to the broker's offsets retention: clean-up must never fail the work it follows.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**librdkafka_options(settings), "log_level": 0})
    try:
        listed = admin.list_consumer_groups(request_timeout=timeout_s).result()
    except KafkaException as error:
        _log.warning("consumer groups not listed", error=str(error))
        return []
    if listed.errors:  # an unreachable broker answers an empty list plus errors, not an exception
        _log.warning("consumer groups listed with errors", errors=[str(e) for e in listed.errors])
    chosen = groups_named_after(names, (g.group_id for g in listed.valid))
    if not chosen:
        return []
    deleted = []
    for group, future in sorted(admin.delete_consumer_groups(chosen, request_timeout=timeout_s).items()):
        try:
            future.result()
            deleted.append(group)
        except KafkaException as error:
            _log.warning("consumer group not deleted", group=group, error=str(error))
    return deleted


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


async def delete_topics_under(settings: Settings, prefixes: Iterable[str]) -> list[str]:
    """Delete the topics named `<prefix>.…` for any of `prefixes`; the names deleted.

    Clean-up of a run's own names: a broker that does not answer is logged, never raised.
    """
    stems = tuple(f"{p}." for p in prefixes)
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        mine = sorted(t for t in await admin.list_topics() if t.startswith(stems))
        if mine:
            await admin.delete_topics(mine)
    except (KafkaError, OSError) as error:
        _log.warning("topics not deleted", prefixes=[s[:-1] for s in stems], error=repr(error))
        return []
    finally:
        await admin.close()
    return mine
