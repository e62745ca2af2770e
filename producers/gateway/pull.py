"""The pull path: a device's outbox from its cursor, down-cast to its versions, with a manifest; long-polls.

The outbox (projections/outbox.py) holds accepted changes in the current schema version; each is served
in the version the device negotiated (`schemas.migrations.downcast_event`) with the caution flags that
name what the device's version cannot show. Notices addressed to the device (conflicts, rejections,
resync) travel as they are. A pull with cursor C acknowledges C: the device applied everything up to it,
which lets the outbox prune what every device has.

`OutboxWatcher` tails the shared feed of tenants someone is waiting on and wakes long-polls and live
streams when rows arrive: at once when the projector's notification for the tenant comes in
(producers/gateway/outbox_signals.py, LISTEN/NOTIFY), and by polling as the fallback.

Tracing: a served page is a `keel.gateway.pull` span (child of the device's pull span) linked to the
projection span of every change on it — the trace context stored with each outbox row — so the delivery of
an op to each other device links back into the op's own trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry.trace import SpanKind

from keel.errors import KeelError
from keel.logging import get_logger
from keel.telemetry import context_from_traceparent, get_tracer, links_from, observe
from producers.gateway.metrics import GatewayMetrics
from producers.gateway.outbox_signals import OutboxSignals
from producers.gateway.tokens import DeviceClaims
from producers.wire import PageEntry, PullResponse, WireEvent, build_manifest
from projections.outbox import FeedItem, OutboxKind, OutboxReader, event_from_body
from schemas.migrations import MigrationRegistry, downcast_event

__all__ = ["OutboxWatcher", "PullService"]

_NO_DEVICE = ""  # reading as no device yields the tenant's shared feed only (device ids are never empty)

_log = get_logger("gateway.pull")
_tracer = get_tracer("gateway")
_metrics = GatewayMetrics()


class OutboxWatcher:
    """Wakes listeners of a tenant when its outbox position moves: at once on a signal, else by polling.

    With a connected `OutboxSignals` source (the projector's notifications), a signalled tenant's feed is read
    immediately and its listeners woken when rows are there; since a reader sees only rows below the oldest
    running transaction, a tenant whose rows are not visible yet is re-read every `retry_s` for up to
    `hot_window_s`. Every watched tenant is still polled: every `fallback_interval_s` while signals arrive
    (they are hints and may be lost), every `interval_s` while they do not, and at once after a reconnection.
    """

    def __init__(
        self,
        outbox: OutboxReader,
        *,
        interval_s: float = 0.25,
        signals: OutboxSignals | None = None,
        fallback_interval_s: float = 2.0,
        retry_s: float = 0.02,
        hot_window_s: float = 2.0,
    ) -> None:
        self._outbox = outbox
        self._interval_s = interval_s
        self._signals = signals
        self._fallback_interval_s = max(interval_s, fallback_interval_s)
        self._retry_s = retry_s
        self._hot_window_s = hot_window_s
        self._listeners: dict[str, set[asyncio.Event]] = {}
        self._last: dict[str, str] = {}
        self._hot: dict[str, float] = {}  # signalled tenant → re-read it every retry_s until this monotonic time
        self._nudge = asyncio.Event()
        self._poll_all = True
        self._task: asyncio.Task[None] | None = None
        self.signals_received = 0
        observe(
            "keel_gateway_waiting_requests",
            self._waiting,
            description="Long-polls and live streams waiting for their tenant's outbox to move (a queue length)",
        )
        observe(
            "keel_gateway_outbox_signals_total",
            self._signalled,
            kind="counter",
            description="Notifications from the projector that a watched tenant's outbox grew",
        )

    def _waiting(self) -> list[tuple[float, dict[str, str]]]:
        return [(float(sum(len(events) for events in self._listeners.values())), {})]

    def _signalled(self) -> list[tuple[float, dict[str, str]]]:
        return [(float(self.signals_received), {})]

    @property
    def is_signalled(self) -> bool:
        """Whether signals arrive now (polling is then only the fallback)."""
        return self._signals is not None and self._signals.is_listening

    async def start(self) -> None:
        """Begin listening for signals and polling (idempotent)."""
        if self._task is None:
            if self._signals is not None:
                await self._signals.start(self._on_grown, self._on_connected)
            self._task = asyncio.create_task(self._run(), name="keel-outbox-watcher")

    async def stop(self) -> None:
        """Stop listening and polling, and wake every listener."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._signals is not None:
                await self._signals.stop()
        self.wake_all()

    def wake_all(self) -> None:
        """Wake every listener (the gateway is draining)."""
        for events in self._listeners.values():
            for event in events:
                event.set()

    def _on_grown(self, tenant_id: str) -> None:
        self.signals_received += 1
        if tenant_id in self._listeners:
            self._hot[tenant_id] = time.monotonic() + self._hot_window_s
            self._nudge.set()

    def _on_connected(self) -> None:
        self._poll_all = True  # signals sent while disconnected are lost: read every watched feed
        self._nudge.set()

    @contextlib.asynccontextmanager
    async def listen(self, tenant_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the tenant's outbox moves, for the duration of the block."""
        event = asyncio.Event()
        self._listeners.setdefault(tenant_id, set()).add(event)
        try:
            yield event
        finally:
            listeners = self._listeners.get(tenant_id)
            if listeners is not None:
                listeners.discard(event)
                if not listeners:
                    del self._listeners[tenant_id]
                    self._last.pop(tenant_id, None)
                    self._hot.pop(tenant_id, None)

    async def poll_once(self, tenants: list[str] | None = None) -> None:
        """Tail the shared feed of the given (default: every) watched tenant once; wake listeners if rows arrived."""
        for tenant_id in list(self._listeners) if tenants is None else tenants:
            if tenant_id not in self._listeners:
                self._hot.pop(tenant_id, None)
                continue
            try:
                position = self._last.get(tenant_id)
                if position is None:
                    # Rows below this position are committed; anything a listener missed before it is
                    # found by its own next read (long-polls re-read every second, streams start with hello).
                    self._last[tenant_id] = await self._outbox.current_cursor(tenant_id)
                    if self._hot.pop(tenant_id, None) is not None:
                        self._wake(tenant_id)  # signalled before its position was known: let them re-read
                    continue
                page = await self._outbox.read(tenant_id, _NO_DEVICE, position, 1000)
            except KeelError as error:
                _log.debug("outbox tail unavailable", tenant=tenant_id, error=str(error))
                continue
            if page.resync_required:
                self._last.pop(tenant_id, None)
                continue
            if page.entries:
                self._last[tenant_id] = page.next_cursor
                self._hot.pop(tenant_id, None)
                self._wake(tenant_id)

    def _wake(self, tenant_id: str) -> None:
        for event in self._listeners.get(tenant_id, ()):
            event.set()

    async def _run(self) -> None:
        last_full = time.monotonic()
        while True:
            every = self._fallback_interval_s if self.is_signalled else self._interval_s
            wait = last_full + every - time.monotonic()
            if self._hot:
                wait = min(wait, self._retry_s)
            if wait > 0 and not self._nudge.is_set():
                # Not `asyncio.wait_for`: on 3.11 it can swallow a cancel arriving with a signal (gh-86296).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._nudge.wait()
            self._nudge.clear()
            now = time.monotonic()
            if self._poll_all or now >= last_full + every:
                self._poll_all, last_full = False, now
                await self.poll_once()
            elif self._hot:
                await self.poll_once(list(self._hot))
            now = time.monotonic()
            for tenant_id in [t for t, until in self._hot.items() if until <= now]:
                del self._hot[tenant_id]


class PullService:
    """Serves outbox pages to devices."""

    def __init__(
        self,
        outbox: OutboxReader,
        watcher: OutboxWatcher,
        migrations: MigrationRegistry,
        *,
        max_wait_s: float = 30.0,
        max_limit: int = 1000,
        recheck_s: float = 1.0,
    ) -> None:
        self._outbox = outbox
        self._watcher = watcher
        self._migrations = migrations
        self.draining = False
        self.max_wait_s = max_wait_s
        self.max_limit = max_limit
        self._recheck_s = recheck_s
        observe(
            "keel_migrations_performed_total",
            self._migrations_performed,
            kind="counter",
            description="Schema migration steps applied to events, by step (MigrationRegistry.performed)",
        )

    def _migrations_performed(self) -> list[tuple[float, dict[str, str]]]:
        performed = self._migrations.performed
        return [(float(count), {"step": step, "service": "gateway"}) for step, count in sorted(performed.items())]

    def _entry(self, item: FeedItem, claims: DeviceClaims) -> PageEntry:
        cursor = item.cursor.encode()
        row = item.entry
        if row.kind is OutboxKind.CHANGE:
            event = event_from_body(row.body)
            version = claims.version_of(event.entity_type)
            cautions: list[str] = []
            if version is not None:
                event, cautions = downcast_event(event, version, self._migrations)
            return PageEntry(
                cursor=cursor, kind=row.kind.value, event=WireEvent.of(event), cautions=cautions, trace=row.trace
            )
        notice: dict[str, Any] = {
            "entity_type": row.entity_type,
            "entity_id": row.entity_id,
            "event_id": row.event_id,
            "body": dict(row.body),
        }
        return PageEntry(cursor=cursor, kind=row.kind.value, notice=notice)

    async def pull(
        self,
        claims: DeviceClaims,
        cursor: str,
        *,
        limit: int = 500,
        wait_s: float = 0.0,
        traceparent: str | None = None,
    ) -> PullResponse:
        """A page after `cursor`, waiting up to `wait_s` for one when there is nothing new."""
        started_ns = time.time_ns()
        page = await self._page(claims, cursor, limit=limit, wait_s=wait_s)
        # Started afterwards with the real start time: only now are the links (the page's changes) known.
        span = _tracer.start_span(
            "keel.gateway.pull",
            context=context_from_traceparent(traceparent),
            kind=SpanKind.SERVER,
            links=links_from(
                [ctx for ctx in (context_from_traceparent(e.trace) for e in page.entries) if ctx is not None]
            ),
            start_time=started_ns,
            attributes={
                "keel.tenant": claims.tenant_id,
                "keel.device": claims.device_id,
                "keel.entries": len(page.entries),
                "keel.resync_required": page.resync_required,
            },
        )
        span.end()
        _metrics.pulled(entry.kind for entry in page.entries)
        return page

    async def _page(self, claims: DeviceClaims, cursor: str, *, limit: int, wait_s: float) -> PullResponse:
        limit = max(1, min(limit, self.max_limit))
        wait_s = max(0.0, min(wait_s, self.max_wait_s))
        if cursor:
            await self._outbox.acknowledge(claims.tenant_id, claims.device_id, cursor)
        page = await self._outbox.read(claims.tenant_id, claims.device_id, cursor, limit)
        if not page.entries and not page.resync_required and wait_s > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            async with self._watcher.listen(claims.tenant_id) as moved:
                while not page.entries and not page.resync_required and not self.draining:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        # Re-read every `recheck_s` even without a wake-up: a watcher that started polling
                        # after the change happened would otherwise never see it move. (Not `wait_for`: on 3.11
                        # it can swallow a cancel that arrives in the iteration of a wake-up, gh-86296.)
                        async with asyncio.timeout(min(remaining, self._recheck_s)):
                            await moved.wait()
                    moved.clear()
                    page = await self._outbox.read(claims.tenant_id, claims.device_id, cursor, limit)
        if page.resync_required:
            # The device repairs from a snapshot read after this moment, then continues from here.
            head = await self._outbox.current_cursor(claims.tenant_id)
            return PullResponse(entries=[], next_cursor=head, resync_required=True, manifest=build_manifest([]))
        entries = [self._entry(item, claims) for item in page.entries]
        return PullResponse(entries=entries, next_cursor=page.next_cursor, manifest=build_manifest(entries))
