"""Read-only Kafka probe: offsets of the change topics, the projector's group, the dead-letter topic, the brokers.

Uses an admin client and a group-less consumer (it never joins or commits anything). Broker quirks:
- Kafka reports no release number over its protocol; the ApiVersions answer stands in for it;
- `offsets_for_times` answers None for a partition with nothing at or after the time: nothing recent there;
- a group the broker never saw is described as state "Dead" with no members, like one that emptied out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import ApiVersionRequest

from consumers.dead_letter import ERROR_CLASS
from deploy.observability.fleet import BrokerProtocol, DeadLetters, GroupState, KafkaView, StoredOffset, lag_of
from keel.errors import ServiceUnavailableError
from keel.kafka_adapter import client_options
from keel.settings import Settings

__all__ = ["KafkaProbe"]

# ApiVersions keys worth naming in a version line (the rest are counted).
_API_NAMES = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 22: "InitProducerId"}
_RECENT_REASONS = 200  # dead letters whose error class is read for the "by reason" breakdown


class KafkaProbe:
    """One connection's worth of read-only questions to Kafka."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        options = client_options(settings)
        self._admin = AIOKafkaAdminClient(**options, request_timeout_ms=int(timeout_s * 1000))
        self._consumer = AIOKafkaConsumer(
            **options, group_id=None, enable_auto_commit=False, request_timeout_ms=int(timeout_s * 1000)
        )
        self._started = False

    async def start(self) -> None:
        """Connect; ServiceUnavailableError when no broker answers."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._admin.start()
                await self._consumer.start()
        except (KafkaError, OSError, TimeoutError) as error:
            await self.close()
            raise ServiceUnavailableError("kafka", f"connect: {error!r}") from error
        self._started = True

    async def close(self) -> None:
        """Disconnect (idempotent)."""
        self._started = False
        await self._consumer.stop()
        await self._admin.close()

    async def _call(self, what: str, coroutine: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await coroutine
        except (KafkaError, OSError, TimeoutError) as error:
            raise ServiceUnavailableError("kafka", f"{what}: {error!r}") from error

    async def protocol(self) -> BrokerProtocol:
        """The API versions of one broker, and how many brokers the cluster has."""
        brokers = self._admin._client.cluster.brokers()  # noqa: SLF001 - aiokafka exposes no public metadata view
        if not brokers:
            raise ServiceUnavailableError("kafka", "no broker in the cluster metadata")
        node = min(b.nodeId for b in brokers)
        response = await self._call(
            "api versions",
            self._admin._client.send(node, ApiVersionRequest()),  # noqa: SLF001 - no public ApiVersions call
        )
        versions = {
            _API_NAMES[key]: (int(low), int(high)) for key, low, high in response.api_versions if key in _API_NAMES
        }
        return BrokerProtocol(len(brokers), len(response.api_versions), versions)

    async def partitions(self, topics: Sequence[str]) -> tuple[list[KafkaPartition], list[str]]:
        """Partitions of the topics that exist, and the names of those that do not."""
        existing = set(await self._call("list topics", self._admin.list_topics()))
        present = [t for t in topics if t in existing]
        missing = [t for t in topics if t not in existing]
        found: list[KafkaPartition] = []
        if present:
            described = await self._call("describe topics", self._admin.describe_topics(present))
            for topic in described:
                found.extend(KafkaPartition(topic["topic"], int(p["partition"])) for p in topic["partitions"])
        return sorted(found), missing

    async def offsets(self, partitions: Sequence[KafkaPartition]) -> tuple[dict[Any, int], dict[Any, int]]:
        """(end offsets, start offsets) of the partitions."""
        if not partitions:
            return {}, {}
        ends = await self._call("end offsets", self._consumer.end_offsets(list(partitions)))
        starts = await self._call("start offsets", self._consumer.beginning_offsets(list(partitions)))
        return {p: int(o) for p, o in ends.items()}, {p: int(o) for p, o in starts.items()}

    async def group(self, group: str) -> tuple[GroupState, dict[tuple[str, int], int]]:
        """The group's state and members, and its committed offsets."""
        described = await self._call("describe group", self._admin.describe_consumer_groups([group]))
        entry = described[0].groups[0] if described and described[0].groups else None
        state = GroupState(group, str(entry[2]) if entry else "Dead", len(entry[5]) if entry else 0)
        committed = await self._call("group offsets", self._admin.list_consumer_group_offsets(group))
        offsets = {(p.topic, p.partition): int(meta.offset) for p, meta in committed.items() if meta.offset >= 0}
        return state, offsets

    async def dead_letters(self, topic: str, window_s: float) -> DeadLetters:
        """Records in the DLQ, how many are newer than `window_s`, and the error classes of the newest."""
        partitions, missing = await self.partitions([topic])
        if missing:
            return DeadLetters(topic, 0, 0, window_s)
        ends, starts = await self.offsets(partitions)
        since_ms = int((time.time() - window_s) * 1000)
        found = await self._call(
            "offsets for times", self._consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
        )
        recent = sum(ends[p] - found[p].offset for p in partitions if found.get(p) is not None)
        records = sum(ends[p] - starts[p] for p in partitions)
        reasons = await self._reasons(partitions, ends, starts) if records else Counter[str]()
        return DeadLetters(
            topic,
            records,
            max(0, recent),
            window_s,
            dict(reasons.most_common()),
            {p.partition: ends[p] for p in partitions},
        )

    async def _reasons(
        self, partitions: list[KafkaPartition], ends: dict[Any, int], starts: dict[Any, int]
    ) -> Counter[str]:
        """Error classes (the `keel-dlq-error-class` header) of up to the newest few hundred dead letters."""
        share = max(1, _RECENT_REASONS // len(partitions))
        wanted = {p: max(starts[p], ends[p] - share) for p in partitions if ends[p] > starts[p]}
        reasons: Counter[str] = Counter()
        self._consumer.assign(list(wanted))
        for partition, offset in wanted.items():
            self._consumer.seek(partition, offset)
        remaining = dict(wanted)
        deadline = time.monotonic() + self._timeout_s
        while remaining and time.monotonic() < deadline:
            batches = await self._call("read dead letters", self._consumer.getmany(timeout_ms=500, max_records=500))
            for partition, records in batches.items():
                for record in records:
                    header = dict(record.headers or ()).get(ERROR_CLASS)
                    reasons[header.decode() if header else "unknown"] += 1
                    if record.offset + 1 >= ends[partition]:
                        remaining.pop(partition, None)
        self._consumer.unsubscribe()
        return reasons

    async def view(
        self, topics: Sequence[str], group: str, stored: Sequence[StoredOffset], window_s: float
    ) -> KafkaView:
        """One full reading: lag per partition, the group, the DLQ, the brokers' protocol."""
        view = KafkaView()
        view.protocol = await self.protocol()
        partitions, view.missing_topics = await self.partitions(topics)
        ends, starts = await self.offsets(partitions)
        view.group, committed = await self.group(group)
        view.partitions = lag_of(
            {(p.topic, p.partition): o for p, o in ends.items()},
            {(p.topic, p.partition): o for p, o in starts.items()},
            committed,
            stored,
        )
        view.dead_letters = await self.dead_letters(self._settings.dlq_topic, window_s)
        return view
