"""The offline-first sync loop: handshake, push the op queue, pull the outbox, listen for pokes, compare digests.

Every step is safe to interrupt anywhere (kill -9, a cancelled task, a dropped connection):
- push is commit-then-transfer: ops are durable locally before they leave, and are marked sent only when
  the gateway answers with the highest seq the broker acknowledged; a retry of an acknowledged op is
  acknowledged again as a duplicate;
- a pulled page is verified against its manifest, then merged and the cursor moved in one transaction.
Transient failures back off exponentially with full jitter under a cap and reset on success; 429 waits
for the gateway's Retry-After, 413 halves the batch (a single op too large for any request is quarantined
and reported to the gateway as abandoned, so its seq cannot block the queue).

Tracing: a push is one `keel.device.push` span linked to the capture span of every op it carries (each op
sends its own traceparent along, so the gateway continues the op's trace); a pull is `keel.device.pull`, and
applying its page is `keel.device.apply`, linked to the projection span of each change it applies.
`SyncStats.retries` and `backoff_s` count what the loop retried and how long it waited.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry.trace import Link, SpanKind

from keel.backoff import Backoff
from keel.errors import (
    AuthError,
    BackpressureError,
    ConfigurationError,
    ForbiddenError,
    IntegrityError,
    KeelError,
    PayloadTooLargeError,
    UpgradeRequiredError,
)
from keel.hlc import wall_clock_ms
from keel.logging import bind_context, get_logger
from keel.telemetry import context_from_traceparent, get_tracer, links_from
from producers.device.divergence import DivergenceRepair
from producers.device.gateway_client import GatewayClient
from producers.device.metrics import DeviceMetrics
from producers.device.replica import SECRET, Replica
from producers.device.store import LoggedOp, OpStatus
from producers.wire import (
    AbandonedSeq,
    HandshakeRequest,
    Limits,
    PageEntry,
    PullResponse,
    WireEvent,
    raise_if_manifest_mismatch,
)
from schemas.migrations import NOTHING_VISIBLE

__all__ = ["LOCAL_ABANDON_CODE", "SyncConfig", "SyncLoop", "SyncState", "SyncStats"]

_log = get_logger("device.sync")
_tracer = get_tracer("device")
_metrics = DeviceMetrics()
T = TypeVar("T")
LOCAL_ABANDON_CODE = "too-large"


class SyncState(enum.Enum):
    """What the loop is doing, as an app shows it."""

    STOPPED = "stopped"
    OFFLINE = "offline"
    CONNECTING = "connecting"
    ONLINE = "online"
    UPGRADE_REQUIRED = "upgrade-required"
    FAILED = "failed"


@dataclass
class SyncConfig:
    """Tunables of the loop (the gateway's limits from the handshake cap the batch sizes)."""

    max_batch_ops: int = 200
    max_batch_bytes: int = 512 * 1024
    pull_limit: int = 500
    long_poll_s: float = 20.0
    idle_recheck_s: float = 15.0
    digest_interval_s: float | None = 60.0
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 10.0
    manifest_retries: int = 3
    use_stream: bool = True
    request_timeout_s: float = 15.0


@dataclass
class SyncStats:
    """Counters for the app, the demo and the tests."""

    handshakes: int = 0
    pushes: int = 0
    ops_acknowledged: int = 0
    ops_quarantined: int = 0
    duplicates_acknowledged: int = 0
    pulls: int = 0
    entries_applied: int = 0
    manifest_mismatches: int = 0
    digest_checks: int = 0
    entities_repaired: int = 0
    resyncs: int = 0
    backpressure_waits: int = 0
    batch_splits: int = 0
    transient_failures: int = 0
    retries: int = 0  # steps retried after a failure (backpressure waits and back-offs alike)
    backoff_s: float = 0.0  # total time waited before those retries


class SyncLoop:
    """Keeps one `Replica` in sync with the gateway; `start` runs it in the background, `sync` runs one round."""

    def __init__(
        self,
        replica: Replica,
        client: GatewayClient,
        *,
        config: SyncConfig | None = None,
        rng: random.Random | None = None,
        on_entries: Callable[[list[PageEntry]], None] | None = None,
    ) -> None:
        self.replica = replica
        self.client = client
        self.config = config or SyncConfig()
        self._rng = rng or random.Random()
        self._on_entries = on_entries
        self.state = SyncState.STOPPED
        self.last_error: str | None = None
        self.stats = SyncStats()
        self.cautions: collections.deque[tuple[str, list[str]]] = collections.deque(maxlen=1000)
        self.notices: collections.deque[PageEntry] = collections.deque(maxlen=1000)
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._limits: Limits | None = None
        self._session_lock = asyncio.Lock()
        self._push_lock = asyncio.Lock()
        self._pull_lock = asyncio.Lock()
        self._ops_limit = self.config.max_batch_ops
        self._push_nudge = asyncio.Event()
        self._poke = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._stream_connected = False
        self._tasks: list[asyncio.Task[None]] = []
        self._divergence = DivergenceRepair(replica, client, self._authorized)

    # ------------------------------------------------------------ session

    def _backoff(self) -> Backoff:
        return Backoff(self.config.backoff_base_s, self.config.backoff_cap_s, random.Random(self._rng.random()))

    async def handshake(self) -> str:
        """Authenticate, negotiate versions, measure the clock offset; returns the bearer token."""
        secret = self.replica.get_meta(SECRET)
        if not secret:
            raise ConfigurationError("this device has no credentials: enroll it first")
        request = HandshakeRequest(
            tenant_id=self.replica.tenant_id,
            device_id=self.replica.device_id,
            device_secret=secret,
            versions={entity: list(v) for entity, v in self.replica.supported_versions.items()},
            client_time_ms=wall_clock_ms(),
        )
        sent_at = wall_clock_ms()
        response = await self.client.handshake(request)
        received_at = wall_clock_ms()
        report = self.replica.record_handshake(response.versions, response.server_time_ms, sent_at, received_at)
        self.replica.raise_seq_floor(response.head_seq, response.head_hash)
        self._token = response.token
        lifetime_s = max(1.0, (response.token_expires_at_ms - response.server_time_ms) / 1000)
        self._token_renew_at = time.monotonic() + lifetime_s * 0.8
        self._limits = response.limits
        self.stats.handshakes += 1
        _log.debug("handshake", device=self.replica.device_id, versions=response.versions, offset_ms=report.offset_ms)
        return response.token

    async def _session(self) -> str:
        async with self._session_lock:
            if self._token is None or time.monotonic() >= self._token_renew_at:
                return await self.handshake()
            return self._token

    async def _authorized(self, call: Callable[[str], Awaitable[T]]) -> T:
        """Run a call with a valid token; one re-handshake when the gateway says the token is no good."""
        for attempt in range(2):
            token = await self._session()
            try:
                return await call(token)
            except ForbiddenError:
                raise
            except AuthError:
                if attempt == 1:
                    raise
                self._token = None  # expired, or the gateway restarted with a new signing key
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ push

    def _batch_limits(self) -> tuple[int, int]:
        ops, size = self._ops_limit, self.config.max_batch_bytes
        if self._limits is not None:
            ops = min(ops, self._limits.max_batch_ops)
            size = min(size, self._limits.max_body_bytes * 3 // 4)  # headroom for the JSON around the ops
        return max(1, ops), size

    def _abandoned(self, batch: Sequence[LoggedOp]) -> list[AbandonedSeq]:
        acked = self.replica.acked_seq()
        local = [
            op
            for op in self.replica.quarantined()
            if op.code == LOCAL_ABANDON_CODE and op.seq > acked and (not batch or op.seq < batch[-1].seq)
        ]
        return [
            AbandonedSeq(
                seq=op.seq,
                event_id=op.event.event_id,
                reason=op.reason or "",
                # The op's signed link, so the device's chain continues past the seq (docs/security.md).
                prev_hash=op.event.prev_hash.hex() if op.event.prev_hash else None,
                hash=op.event.hash.hex() if op.event.hash else None,
                signature=op.event.signature.hex() if op.event.signature else None,
            )
            for op in local
        ]

    async def push_once(self) -> bool:
        """Send one batch of pending ops; False when there was nothing to send."""
        async with self._push_lock:
            max_ops, max_bytes = self._batch_limits()
            batch = self.replica.pending_batch(max_ops, max_bytes)
            abandoned = self._abandoned(batch)
            if not batch and not abandoned:
                return False
            ops = [WireEvent.of(op.event) for op in batch]
            traces = {op.seq: op.trace for op in batch if op.trace}
            with _tracer.start_as_current_span(
                "keel.device.push",
                kind=SpanKind.CLIENT,
                links=_links(traces.values()),
                attributes={"keel.device": self.replica.device_id, "keel.push.ops": len(batch)},
            ):
                try:
                    response = await self._authorized(lambda token: self.client.push(token, ops, abandoned, traces))
                except PayloadTooLargeError as error:
                    self.stats.batch_splits += 1
                    if len(batch) <= 1:
                        reason = f"the op is larger than the gateway accepts in one request: {error}"
                        self.replica.quarantine(batch[0].seq, LOCAL_ABANDON_CODE, reason)
                        self.stats.ops_quarantined += 1
                    else:
                        self._ops_limit = max(1, len(batch) // 2)
                    return True
            # Additive increase after a success, halving on 413 (AIMD): the limit settles under the gateway's.
            self._ops_limit = min(self.config.max_batch_ops, self._ops_limit + max(1, self._ops_limit // 4))
            rejected = {r.seq: (r.code, r.reason) for r in response.rejections}
            outcome = self.replica.record_acknowledgement([op.seq for op in batch], response.acked_seq, rejected)
            self.stats.pushes += 1
            self.stats.ops_acknowledged += outcome.sent
            _metrics.pushed(outcome.sent)
            self.stats.ops_quarantined += outcome.quarantined
            self.stats.duplicates_acknowledged += len(response.duplicates)
            if response.gap is not None:
                moved = self.replica.requeue_from(response.gap.expected)
                self.last_error = (
                    f"gateway expected seq {response.gap.expected}, got {response.gap.received}; "
                    f"re-sent {moved} ops from the op-log"
                )
                _log.warning("sequence gap", device=self.replica.device_id, gap=response.gap.model_dump(), moved=moved)
            return True

    async def push_all(self) -> int:
        """Push until the queue is empty; how many batches went out."""
        batches = 0
        while await self.push_once():
            batches += 1
        return batches

    # ------------------------------------------------------------ pull

    async def _pull_verified(self, wait_s: float) -> PullResponse:
        cursor = self.replica.cursor
        for attempt in range(self.config.manifest_retries):
            page = await self._authorized(
                functools.partial(self.client.pull, cursor=cursor, limit=self.config.pull_limit, wait_s=wait_s)
            )
            try:
                raise_if_manifest_mismatch(page)
            except IntegrityError:
                self.stats.manifest_mismatches += 1
                _log.warning("manifest mismatch, pulling the page again", device=self.replica.device_id)
                if attempt + 1 == self.config.manifest_retries:
                    raise
                wait_s = 0.0
                continue
            return page
        raise AssertionError("unreachable")

    async def pull_once(self, wait_s: float = 0.0) -> int:
        """Pull one page (long-polling up to `wait_s`), verify it and apply it; how many entries it held."""
        async with self._pull_lock:
            with _tracer.start_as_current_span("keel.device.pull", kind=SpanKind.CLIENT) as span:
                page = await self._pull_verified(wait_s)
                span.set_attribute("keel.entries", len(page.entries))
                self.stats.pulls += 1
                if page.resync_required:
                    await self._resync(page.next_cursor)
                    return 0
                if not page.entries:
                    self._apply_page(page)  # moves nothing but the cursor: no span of its own
                else:
                    with _tracer.start_as_current_span(
                        "keel.device.apply",
                        links=_links(entry.trace for entry in page.entries),
                        attributes={"keel.device": self.replica.device_id, "keel.entries": len(page.entries)},
                    ):
                        self._apply_page(page)
            self.stats.entries_applied += len(page.entries)
            _metrics.applied(len(page.entries))
            if any(entry.kind == "resync" for entry in page.entries):
                # The server's state changed without feed entries (a rebuild swapped tables): compare and repair.
                self.stats.resyncs += 1
                await self._repair_types(self.replica.supported_versions)
            if self._on_entries is not None and page.entries:
                self._on_entries(page.entries)
            if not page.entries:
                self._caught_up.set()
            return len(page.entries)

    def _apply_page(self, page: PullResponse) -> None:
        """Merge a verified page's changes and move the cursor (notices and cautions are kept for the app)."""
        events = []
        for entry in page.entries:
            if entry.event is None:
                self.notices.append(entry)
                continue
            if entry.cautions:
                self.cautions.append((entry.event.event_id, list(entry.cautions)))
            if any(c.startswith(f"{NOTHING_VISIBLE}:") for c in entry.cautions):
                continue  # nothing this version can show: applying it would assert every field
            events.append(entry.event.to_event())
        self.replica.apply_remote(events, page.next_cursor)

    async def pull_all(self) -> int:
        """Pull until an empty page; how many entries were applied."""
        total = 0
        while (count := await self.pull_once()) > 0:
            total += count
        return total

    # ------------------------------------------------------------ digests and repair

    async def _repair_types(self, entity_types: Iterable[str]) -> int:
        repaired = await self._divergence.repair(entity_types)
        self.stats.entities_repaired += repaired
        return repaired

    async def check_digests(self) -> dict[str, bool]:
        """Compare this device's digests with the server's; repair the types that differ. Type → matched."""
        result = await self._divergence.compare()
        self.stats.digest_checks += 1
        mismatched = [t for t, ok in result.items() if not ok]
        if mismatched:
            _log.warning("digest mismatch, repairing", device=self.replica.device_id, entity_types=mismatched)
            await self._repair_types(mismatched)
        return result

    async def _resync(self, cursor_after: str) -> None:
        """The outbox no longer reaches back to our cursor: repair every type, then continue from the head."""
        self.stats.resyncs += 1
        await self._repair_types(self.replica.supported_versions)
        self.replica.reset_cursor(cursor_after)

    # ------------------------------------------------------------ one round, for tests and apps that drive it

    async def sync(self) -> None:
        """Push everything pending, then pull until caught up."""
        await self.push_all()
        await self.pull_all()

    # ------------------------------------------------------------ background workers

    def nudge(self) -> None:
        """Wake the push worker (a local write happened). Call from the loop's thread."""
        self._push_nudge.set()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def _guarded(self, name: str, step: Callable[[], Awaitable[bool]]) -> None:
        """Run `step` forever; it returns True to go on at once, False to idle. Errors back off or stop."""
        bind_context(tenant=self.replica.tenant_id, device=self.replica.device_id)
        backoff = self._backoff()
        while True:
            try:
                busy = await step()
                backoff.reset()
                if self.state is SyncState.CONNECTING:
                    self.state = SyncState.ONLINE
                if not busy:
                    return
            except BackpressureError as error:
                self.stats.backpressure_waits += 1
                self.last_error = str(error)
                await self._wait_to_retry("backpressure", error.retry_after_s + self._rng.uniform(0, 0.05))
            except UpgradeRequiredError as error:
                self._fail(SyncState.UPGRADE_REQUIRED, error)
                return
            except (AuthError, ConfigurationError) as error:
                self._fail(SyncState.FAILED, error)
                return
            except KeelError as error:
                # Transient (unavailable, timeouts) and per-request refusals alike: keep the data, retry later.
                self.stats.transient_failures += 1
                self.last_error = f"{name}: {error}"
                if self.state is SyncState.ONLINE:
                    self.state = SyncState.CONNECTING
                await self._wait_to_retry("error", backoff.next_delay())

    async def _wait_to_retry(self, reason: str, delay_s: float) -> None:
        """Sleep before a retry, counting it in the stats and metrics."""
        self.stats.retries += 1
        self.stats.backoff_s += max(0.0, delay_s)
        _metrics.retried(reason, delay_s)
        await self._sleep(delay_s)

    def _fail(self, state: SyncState, error: KeelError) -> None:
        self.state = state
        self.last_error = str(error)
        _log.error("sync stopped", device=self.replica.device_id, state=state.value, error=str(error))
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def _push_worker(self) -> None:
        while True:
            self._push_nudge.clear()

            async def step() -> bool:
                return await self.push_once()

            await self._guarded("push", step)
            # Not `asyncio.wait_for`: on 3.11 it swallows a cancel that arrives in the iteration the event is
            # set (CPython gh-86296), and `stop()` would wait for this worker forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.idle_recheck_s):
                    await self._push_nudge.wait()

    async def _pull_worker(self) -> None:
        while True:
            self._poke.clear()
            streaming = self.config.use_stream and self._stream_connected
            wait_s = 0.0 if streaming else self.config.long_poll_s

            async def step(wait: float = wait_s) -> bool:
                return await self.pull_once(wait) > 0

            await self._guarded("pull", step)
            if self.config.use_stream and self._stream_connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.idle_recheck_s):  # not wait_for: see _push_worker
                        await self._poke.wait()

    async def _stream_worker(self) -> None:
        backoff = self._backoff()
        while True:
            try:
                token = await self._session()
                async for event in self.client.stream(token, read_timeout_s=self.config.idle_recheck_s * 3):
                    if not self._stream_connected:
                        self._stream_connected = True
                        backoff.reset()
                    if event.name in ("poke", "hello"):
                        self._poke.set()
            except UpgradeRequiredError as error:
                self._fail(SyncState.UPGRADE_REQUIRED, error)
                return
            except ForbiddenError as error:
                self._fail(SyncState.FAILED, error)
                return
            except AuthError:
                self._token = None
            except KeelError as error:
                self.last_error = f"stream: {error}"
            finally:
                self._stream_connected = False
                self._poke.set()  # fall back to long-polling at once
            await self._sleep(backoff.next_delay())

    async def _digest_worker(self) -> None:
        interval = self.config.digest_interval_s
        if interval is None:
            return
        while True:
            await self._sleep(interval)
            if self.replica.count(OpStatus.PENDING) or not self._caught_up.is_set():
                continue  # only a quiet, caught-up device compares meaningfully

            async def step() -> bool:
                await self.check_digests()
                return False

            await self._guarded("digest", step)

    async def start(self) -> None:
        """Run the workers in the background (idempotent)."""
        if self._tasks:
            return
        self.state = SyncState.CONNECTING
        workers: list[Callable[[], Coroutine[Any, Any, None]]] = [
            self._push_worker,
            self._pull_worker,
            self._digest_worker,
        ]
        if self.config.use_stream:
            workers.append(self._stream_worker)
        self._tasks = [asyncio.create_task(worker(), name=f"keel-sync-{worker.__name__}") for worker in workers]
        for task in self._tasks:
            task.add_done_callback(self._on_worker_done)

    def _on_worker_done(self, task: asyncio.Task[None]) -> None:
        """A worker that ends with an exception is a bug: stop syncing and say so instead of dying silently."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        self.state = SyncState.FAILED
        self.last_error = f"{task.get_name()} crashed: {error!r}"
        _log.error("sync worker crashed", device=self.replica.device_id, worker=task.get_name(), error=repr(error))

    async def stop(self, state: SyncState = SyncState.STOPPED) -> None:
        """Cancel the workers; anything interrupted is redone on the next start (idempotent)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # never raises: a crashed worker was reported by _on_worker_done
        self._stream_connected = False
        self._caught_up.clear()
        if self.state not in (SyncState.UPGRADE_REQUIRED, SyncState.FAILED):
            self.state = state

    @property
    def is_running(self) -> bool:
        """Whether the background workers run."""
        return bool(self._tasks)

    async def wait_synced(self, timeout_s: float) -> None:
        """Wait until nothing is pending and a pull finds nothing new (TimeoutError after `timeout_s`)."""
        async with asyncio.timeout(timeout_s):
            while True:
                if self.state in (SyncState.UPGRADE_REQUIRED, SyncState.FAILED):
                    raise ConfigurationError(f"sync stopped: {self.state.value}: {self.last_error}")
                if self.replica.count(OpStatus.PENDING) == 0:
                    try:
                        if await self.pull_once(0.0) == 0 and self.replica.count(OpStatus.PENDING) == 0:
                            return
                        continue
                    except KeelError as error:
                        if not error.retriable and not isinstance(error, IntegrityError):
                            raise
                await asyncio.sleep(0.1)


def _links(traceparents: Iterable[str | None]) -> list[Link]:
    """Links to the spans named by stored or received traceparents (unusable ones are skipped)."""
    return links_from([ctx for ctx in (context_from_traceparent(t) for t in traceparents) if ctx is not None])
