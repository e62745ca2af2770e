"""The state relay: the projector's outbox → compacted `<prefix>.<entity>.state` topics (a transactional outbox).

Partners who want the resolved state of entities, not every write, read a compacted topic per entity type
(docs/partners.md § Consume resolved state). The relay makes it:

1. read a page of tenant-wide feed rows of every tenant after its cursor, in commit order (`StateFeed.read`,
   the xid8 rule of device feeds: a row that commits late is never skipped);
2. take the distinct entities of the page and read their current merged states (`ProjectionStore`);
3. produce one record per entity — key `<tenant_id>/<entity_id>`, value the Avro state record
   (`schemas/state_schema.py`), Confluent-framed — and wait until Kafka acknowledged all (acks=all,
   idempotent producer);
4. only then store the cursor in PostgreSQL.

A crash between 3 and 4 publishes the page again after a restart: at least once, and harmless — the record
re-sent carries the same or a newer state of a compacted key, and per-key order holds because the relay is
a single writer reading states newer than anything it sent before. A RESYNC row (a rebuild swapped a
tenant's tables) republishes every state of that tenant and type. If rows after the cursor were pruned
(`outbox_horizons` above it: the relay was down longer than devices keep the feed), the relay republishes
every state of every entity — a snapshot — logs it and counts it in `keel_state_relay_snapshots_total`.

Driver-free: the feed and store are ports, the registry is `SchemaRegistry`, Kafka is a `LogWriter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from keel.backoff import Backoff
from keel.errors import TransientError
from keel.event_log import LogWriter, OutgoingRecord
from keel.logging import get_logger
from keel.telemetry import get_meter
from projections.conflict_rules import EntityState
from projections.entity_tables import entity_tables
from projections.outbox import START, Cursor, OutboxKind
from projections.state_feed import FeedChange, StateFeed
from projections.store import ProjectionStore
from schemas.catalog import Catalog, default_catalog, subject_for
from schemas.codec import encode_body, frame, union_branches, with_branches
from schemas.envelope import TraceHeaders
from schemas.registry import SchemaRegistry
from schemas.state_schema import parsed_state_schema, state_schema_text

__all__ = ["RelayStats", "StateEncoder", "StateRelay", "state_key"]

_log = get_logger("state_relay")
_meter = get_meter("state_relay")
_published = _meter.create_counter(
    "keel_state_relay_published_total", description="State records acknowledged by Kafka, by entity type"
)
_snapshots = _meter.create_counter(
    "keel_state_relay_snapshots_total",
    description="Full republications of every state because the relay's cursor fell below the outbox prune horizon",
)
_resyncs = _meter.create_counter(
    "keel_state_relay_resyncs_total", description="Tenant republications after a rebuild swap (RESYNC feed rows)"
)
DEFAULT_RELAY_NAME = "state-relay"


def state_key(tenant_id: str, entity_id: str) -> bytes:
    """The record key `<tenant_id>/<entity_id>`, UTF-8: entity ids are unique only within a tenant."""
    return f"{tenant_id}/{entity_id}".encode()


class StateEncoder:
    """Merged states to Confluent-framed Avro state records, registered under `<topic>-value`."""

    def __init__(
        self, registry: SchemaRegistry, topic_for: Callable[[str], str], *, catalog: Catalog | None = None
    ) -> None:
        self._registry = registry
        self._topic_for = topic_for
        self._catalog = catalog or default_catalog()
        self._ids: dict[str, int] = {}
        self._parsed: dict[str, Any] = {}
        self._branches: dict[str, tuple[tuple[str, str], ...]] = {}
        self._defaults = {name: table.defaults() for name, table in entity_tables(self._catalog).items()}

    async def schema_id(self, entity: str) -> int:
        """Register (idempotent) the state schema under its subject and cache its id: the relay owns it."""
        cached = self._ids.get(entity)
        if cached is not None:
            return cached
        self._ids[entity] = await self._registry.register(
            subject_for(self._topic_for(entity)), state_schema_text(self._catalog, entity)
        )
        self._parsed[entity] = parsed_state_schema(self._catalog, entity)
        self._branches[entity] = union_branches(self._parsed[entity])
        return self._ids[entity]

    def value_of(self, state: EntityState, source_cursor: str) -> dict[str, Any]:
        """The state record of `state` as a dict (what a plain Avro reader gets back)."""
        visible = state.visible(self._defaults[state.entity_type])
        newest = state.newest_stamp
        hlc = None
        if newest is not None:
            written = next((r.hlc for r in state.history if r.event_id == newest.event_id), None)
            hlc = {
                "physical_ms": newest.physical_ms,
                "logical": newest.logical,
                "node": written.node if written is not None else newest.device_id,
            }
        return {
            "tenant_id": state.tenant_id,
            "entity_type": state.entity_type,
            "entity_id": state.entity_id,
            "deleted": visible is None,
            "schema_version": self._catalog.current_version(state.entity_type),
            "state": visible,
            "hlc": hlc,
            "last_event_id": newest.event_id if newest else None,
            "last_device_id": newest.device_id if newest else None,
            "source_cursor": source_cursor,
        }

    async def record(self, state: EntityState, source_cursor: str, trace: str | None = None) -> OutgoingRecord:
        """The log record of one state: its topic, key `<tenant>/<entity>`, headers keel-tenant (+ traceparent)."""
        schema_id = await self.schema_id(state.entity_type)
        value = self.value_of(state, source_cursor)
        body = encode_body(with_branches(value, self._branches[state.entity_type]), self._parsed[state.entity_type])
        headers = [
            (TraceHeaders.TENANT, state.tenant_id.encode()),
            (TraceHeaders.SCHEMA_VERSION, str(value["schema_version"]).encode()),
        ]
        if trace:
            headers.append((TraceHeaders.TRACEPARENT, trace.encode()))
        return OutgoingRecord(
            self._topic_for(state.entity_type),
            state_key(state.tenant_id, state.entity_id),
            frame(schema_id, body),
            tuple(headers),
        )


@dataclass
class RelayStats:
    """What the relay did since it started (for /health)."""

    pages: int = 0
    published: int = 0
    snapshots: int = 0
    resyncs: int = 0
    transient_failures: int = 0
    last_publish_ms: int | None = None


class StateRelay:
    """One relay: a single writer of the state topics (run one replica; two would only duplicate records)."""

    def __init__(
        self,
        feed: StateFeed,
        store: ProjectionStore,
        writer: LogWriter,
        encoder: StateEncoder,
        *,
        catalog: Catalog | None = None,
        name: str = DEFAULT_RELAY_NAME,
        page_size: int = 500,
        after_produce: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._feed = feed
        self._store = store
        self._writer = writer
        self._encoder = encoder
        self._catalog = catalog or default_catalog()
        self.name = name
        self._page_size = page_size
        self._after_produce = after_produce  # test hook: runs after Kafka acked a page, before the cursor is stored
        self.cursor: Cursor | None = None
        self.stats = RelayStats()
        self.waiting_on: str | None = None

    async def _publish(self, records: Sequence[OutgoingRecord]) -> None:
        if not records:
            return
        await self._writer.write(records)  # returns once every record is acknowledged (acks=all)
        counts: dict[str, int] = {}
        for record in records:
            counts[record.topic] = counts.get(record.topic, 0) + 1
        for topic, count in counts.items():
            _published.add(count, {"topic": topic})
        self.stats.published += len(records)
        self.stats.last_publish_ms = time.time_ns() // 1_000_000
        if self._after_produce is not None:
            await self._after_produce()

    async def _republish(self, entity_type: str, source: str, *, tenant_id: str | None = None) -> int:
        """Every state of a type (optionally one tenant's), page by page; records published."""
        after: tuple[str, str] | None = None
        published = 0
        while True:
            states = await self._feed.states_after(entity_type, after, self._page_size, tenant_id=tenant_id)
            if not states:
                return published
            await self._publish([await self._encoder.record(state, source) for state in states])
            published += len(states)
            after = (states[-1].tenant_id, states[-1].entity_id)

    async def snapshot(self) -> int:
        """Republish every state of every entity, then continue from a point the snapshot covers."""
        resume = await self._feed.resume_point()  # before reading: rows below it are in the states read next
        _log.warning(
            "state relay cursor is below the outbox prune horizon: republishing every state (snapshot)",
            relay=self.name,
            cursor=(self.cursor or START).encode(),
            resume=resume.encode(),
        )
        source = f"snapshot:{resume.encode()}"
        published = 0
        for entity_type in self._catalog.entities():
            published += await self._republish(entity_type, source)
        await self._feed.store_cursor(self.name, resume)
        self.cursor = max(resume, self.cursor or START)
        self.stats.snapshots += 1
        _snapshots.add(1)
        _log.info("state relay snapshot done", relay=self.name, published=published, cursor=self.cursor.encode())
        return published

    async def step(self) -> int:
        """Relay one page of the feed; records published (0: nothing new)."""
        if self.cursor is None:
            self.cursor = await self._feed.load_cursor(self.name) or START
        page = await self._feed.read(self.cursor, self._page_size)
        if page.pruned:
            return await self.snapshot()
        if not page.changes:
            return 0
        latest: dict[tuple[str, str, str], FeedChange] = {}  # last row of each entity in the page
        resyncs: dict[tuple[str, str], FeedChange] = {}
        for change in page.changes:
            if change.kind is OutboxKind.RESYNC:
                for entity_type in change.entity_types:
                    resyncs[(change.tenant_id, entity_type)] = change
            elif change.kind is OutboxKind.CHANGE and change.entity_type and change.entity_id:
                latest.pop((change.entity_type, change.tenant_id, change.entity_id), None)
                latest[(change.entity_type, change.tenant_id, change.entity_id)] = change
        records = await self._records(latest)
        await self._publish(records)
        published = len(records)
        for (tenant_id, entity_type), change in resyncs.items():
            if entity_type in self._catalog.schemas:
                published += await self._republish(entity_type, change.cursor.encode(), tenant_id=tenant_id)
                self.stats.resyncs += 1
                _resyncs.add(1, {"entity": entity_type})
        await self._feed.store_cursor(self.name, page.next_cursor)  # strictly after every ack
        self.cursor = page.next_cursor
        self.stats.pages += 1
        return published

    async def _records(self, latest: dict[tuple[str, str, str], FeedChange]) -> list[OutgoingRecord]:
        """One record per entity of the page, its current state read in one query per (type, tenant)."""
        groups: dict[tuple[str, str], list[str]] = {}
        for entity_type, tenant_id, entity_id in latest:
            groups.setdefault((entity_type, tenant_id), []).append(entity_id)
        states: dict[tuple[str, str, str], EntityState] = {}
        for (entity_type, tenant_id), ids in groups.items():
            if entity_type not in self._catalog.schemas:
                _log.warning("feed row of an unknown entity type skipped", entity_type=entity_type)
                continue
            for entity_id, state in (await self._store.entity_states(entity_type, tenant_id, ids)).items():
                states[(entity_type, tenant_id, entity_id)] = state
        records = []
        for key, change in latest.items():  # feed order: the entity whose row came first is sent first
            found = states.get(key)
            if found is not None:
                records.append(await self._encoder.record(found, change.cursor.encode(), change.trace))
        return records

    async def run(self, stop: asyncio.Event, *, poll_s: float = 0.5) -> None:
        """Relay until `stop` is set; transient failures (database, broker, registry) back off and retry."""
        backoff = Backoff(0.2, 5.0)
        while not stop.is_set():
            try:
                published = await self.step()
            except TransientError as error:
                self.stats.transient_failures += 1
                self.waiting_on = type(error).__name__
                delay = backoff.next_delay()
                _log.warning("state relay waiting on a dependency", error=str(error), delay_s=round(delay, 2))
                await _wait(stop, delay)
                continue
            self.waiting_on = None
            backoff.reset()
            if published == 0:
                await _wait(stop, poll_s)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    # Not `asyncio.wait_for`: on 3.11 it can swallow a cancel arriving as `stop` is set (CPython gh-86296).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
