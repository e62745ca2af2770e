"""The simulated fleet: SDK devices in this process, each with a SQLite store, playing its part of the plan.

Every device is a real `producers.device.Device` (enrolled with the gateway, its own SQLite file, its
background sync loop) whose hybrid logical clock reads a wall clock skewed as the plan says. A task per
device sleeps until each of its actions and performs it: a write rendered in the version the device speaks
at that moment, a delete, going offline (the sync loop stops; writes go on) or back online. Each return
online starts a catch-up watch: the time until nothing is pending and a pull finds nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.demo.edits import render
from deploy.demo.plan import Action, ActionKind, DemoPlan, DeviceSpec
from keel.errors import KeelError, TransientError
from keel.hlc import wall_clock_ms
from keel.logging import get_logger
from producers.device import Device, SyncConfig, SyncState
from producers.device.gateway_client import GatewayClient
from producers.device.replica import SECRET, Replica
from producers.device.sqlite_store_adapter import SqliteDeviceStore
from producers.device.store import OpStatus
from producers.wire import EnrollRequest

__all__ = ["DEMO_SYNC", "FeedHead", "Fleet", "FleetCounters", "Reconnect", "SimulatedDevice", "cursor_key"]

_log = get_logger("demo.fleet")
STOP_TIMEOUT_S = 15.0

# Quick to notice a healed network (backoff cap 3 s), no periodic digest repair: convergence must come from
# the feed alone, and the final check compares digests without repairing anything.
DEMO_SYNC = SyncConfig(
    long_poll_s=10.0,
    idle_recheck_s=5.0,
    digest_interval_s=None,
    backoff_base_s=0.2,
    backoff_cap_s=3.0,
    request_timeout_s=10.0,
)


@dataclass(frozen=True, slots=True)
class Reconnect:
    """One return online: how long the device had been away and how long it took to catch up."""

    device_id: str
    offline_s: float
    online_at_s: float
    catch_up_s: float | None  # None: went offline again (or the run ended) before it caught up
    pending_at_reconnect: int


@dataclass(frozen=True, slots=True)
class VersionChange:
    """A device moved to another version of an entity at a handshake."""

    device_id: str
    entity_type: str
    before: int
    after: int
    at_s: float


@dataclass
class SimulatedDevice:
    """One device of the fleet and what happened to it."""

    spec: DeviceSpec
    device: Device
    writes: int = 0
    refused_locally: int = 0
    offline_since: float | None = None
    reconnects: list[Reconnect] = field(default_factory=list)
    versions_seen: dict[str, int] = field(default_factory=dict)
    catch_up: asyncio.Task[None] | None = None
    stop_timeouts: int = 0  # go_offline calls whose sync loop did not stop in time


@dataclass(frozen=True, slots=True)
class FleetCounters:
    """Totals over the fleet at one moment."""

    written: int
    acknowledged: int
    pending: int
    quarantined: int
    online: int
    connected: int
    retries: int
    handshakes: int
    repaired: int


FeedHead = Callable[[str, str], Awaitable[str]]  # (tenant, device) → cursor of the newest feed row it may read


def cursor_key(cursor: str) -> tuple[int, int]:
    """An outbox cursor `"<tx>.<pos>"` (docs/architecture.md) as a sortable pair; `""` sorts first."""
    if not cursor:
        return (0, 0)
    tx, _, pos = cursor.partition(".")
    return (int(tx), int(pos))


def _skewed(skew_ms: int) -> Callable[[], int]:
    def wall() -> int:
        return wall_clock_ms() + skew_ms

    return wall


class Fleet:
    """All devices of a plan against one gateway."""

    def __init__(
        self,
        plan: DemoPlan,
        gateway_url: str,
        *,
        enrollment_secret: str,
        folder: Path,
        elapsed: Callable[[], float],
        feed_head: FeedHead | None = None,
        config: SyncConfig = DEMO_SYNC,
    ) -> None:
        self.plan = plan
        self.feed_head = feed_head
        self.gateway_url = gateway_url
        self.enrollment_secret = enrollment_secret
        self.folder = folder
        self.elapsed = elapsed
        self.config = config
        self.members: dict[str, SimulatedDevice] = {}
        self.version_changes: list[VersionChange] = []
        self._repairs: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ enrollment

    async def _enroll_one(self, spec: DeviceSpec) -> SimulatedDevice:
        client = GatewayClient(self.gateway_url, timeout_s=self.config.request_timeout_s)
        request = EnrollRequest(
            tenant_id=spec.tenant_id,
            enrollment_secret=self.enrollment_secret,
            device_id=spec.device_id,
            label=spec.label,
        )
        try:
            for attempt in range(5):
                try:
                    enrolled = await client.enroll(request)
                    break
                except TransientError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))
        except BaseException:
            await client.aclose()
            raise
        # Device.enroll would build the same replica; composed here to give its clock a skewed wall.
        store = SqliteDeviceStore(self.folder / f"{spec.device_id}.db")
        replica = Replica(
            store,
            tenant_id=enrolled.tenant_id,
            device_id=enrolled.device_id,
            supported_versions=spec.versions(),
            wall=_skewed(spec.clock_skew_ms),
        )
        replica.set_meta({SECRET: enrolled.device_secret})
        return SimulatedDevice(spec, Device(replica, client, self.config))

    async def enroll(self, *, parallel: int = 8) -> None:
        """Enroll every device (a few at a time) and bring it online."""
        self.folder.mkdir(parents=True, exist_ok=True)
        gate = asyncio.Semaphore(parallel)

        async def one(spec: DeviceSpec) -> None:
            async with gate:
                member = await self._enroll_one(spec)
                self.members[spec.device_id] = member
                # Handshake before anything is written: until then a replica writes in the newest version it
                # supports, which the server may not offer it.
                await member.device.sync_loop.handshake()
                member.versions_seen.update(member.device.replica.negotiated_versions)
                await member.device.start()

        await asyncio.gather(*(one(spec) for spec in self.plan.devices))

    # ------------------------------------------------------------ playing the plan

    async def play(self) -> None:
        """Perform every action at its time (returns when the last one is done)."""
        await asyncio.gather(
            *(self._play_device(member, self.plan.actions_of(device_id)) for device_id, member in self.members.items())
        )

    async def _play_device(self, member: SimulatedDevice, actions: list[Action]) -> None:
        for action in actions:
            delay = action.at_s - self.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.perform(member, action)

    async def perform(self, member: SimulatedDevice, action: Action) -> None:
        """One action of one device."""
        device = member.device
        if action.kind is ActionKind.OFFLINE:
            await self._go_offline(member)
        elif action.kind is ActionKind.ONLINE:
            await self._go_online(member)
        elif action.kind is ActionKind.DELETE:
            device.delete(action.entity_type, action.entity_id)
            member.writes += 1
        else:
            version = device.replica.local_version(action.entity_type)
            fields = render(action.entity_type, version, action.fields_dict())
            if fields is None:
                member.refused_locally += 1
                return
            try:
                device.upsert(action.entity_type, action.entity_id, fields)
            except KeelError as error:
                member.refused_locally += 1
                _log.warning("write refused locally", device=device.device_id, error=str(error))
                return
            member.writes += 1

    async def _go_offline(self, member: SimulatedDevice) -> None:
        if member.catch_up is not None and not member.catch_up.done():
            member.catch_up.cancel()  # the watch would talk to the gateway while the device is offline
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await member.device.go_offline()
        except TimeoutError:
            # A sync worker did not end when cancelled (on Python 3.11 `asyncio.wait_for` can swallow a
            # cancellation, CPython gh-86296): the device keeps syncing; the run goes on and says so.
            member.stop_timeouts += 1
            _log.warning("device did not stop syncing", device=member.device.device_id, timeout_s=STOP_TIMEOUT_S)
        member.offline_since = self.elapsed()

    async def _go_online(self, member: SimulatedDevice) -> None:
        since = member.offline_since
        member.offline_since = None
        await member.device.go_online()
        if since is not None:
            now = self.elapsed()
            pending = member.device.replica.count(OpStatus.PENDING)
            member.catch_up = asyncio.create_task(self._watch_catch_up(member, now - since, now, pending))

    async def _watch_catch_up(self, member: SimulatedDevice, offline_s: float, online_at: float, pending: int) -> None:
        """Time until the device's queue is empty and its cursor reached the feed's head at its return.

        It only watches the local store (an offline device must not talk to the gateway); without a feed head
        it falls back to `wait_synced`, which also counts an idle long-poll holding the pull lock.
        """
        began = time.monotonic()
        device = member.device
        caught_up: float | None = None
        try:
            async with asyncio.timeout(max(60.0, self.plan.duration_s)):
                if self.feed_head is None:
                    await device.wait_synced(max(60.0, self.plan.duration_s))
                else:
                    head = cursor_key(await self.feed_head(device.tenant_id, device.device_id))
                    # The SDK has no event for "queue empty and cursor past X": poll the local store.
                    while device.replica.count(OpStatus.PENDING) or cursor_key(device.replica.cursor) < head:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            caught_up = time.monotonic() - began
        except (TimeoutError, KeelError) as error:
            _log.warning("device did not catch up", device=device.device_id, error=repr(error))
        finally:
            member.reconnects.append(Reconnect(device.device_id, offline_s, online_at, caught_up, pending))

    # ------------------------------------------------------------ upgrades

    def watch_versions(self) -> None:
        """Notice devices whose negotiated version changed (the rollout) and re-render their rows.

        After a handshake that changes an entity's version the replica writes and pulls in the new version,
        but rows it stored before keep the old shape; the digest exchange repairs exactly those (an app would
        do this on its upgrade). Offline devices are repaired when they are back.
        """
        for member in self.members.values():
            negotiated = member.device.replica.negotiated_versions
            for entity_type, version in negotiated.items():
                before = member.versions_seen.get(entity_type)
                member.versions_seen[entity_type] = version
                if before is None or before == version:
                    continue
                change = VersionChange(member.device.device_id, entity_type, before, version, self.elapsed())
                self.version_changes.append(change)
                task = asyncio.create_task(self._rerender(member))
                self._repairs.add(task)
                task.add_done_callback(self._repairs.discard)

    async def _rerender(self, member: SimulatedDevice) -> None:
        for _ in range(60):
            if member.device.is_online:
                try:
                    # Digests compare meaningfully only when caught up (else in-flight changes look like drift).
                    await member.device.wait_synced(30.0)
                    await member.device.check_digests()
                except (KeelError, TimeoutError) as error:
                    _log.info("re-render after an upgrade postponed", device=member.device.device_id, error=str(error))
                else:
                    return
            await asyncio.sleep(2.0)

    async def upgrade_now(self, device_ids: list[str]) -> dict[str, int]:
        """Make online devices handshake again now (a 'new version available' push); device → task version."""
        online = [self.members[d] for d in device_ids if self.members[d].device.is_online]

        async def again(member: SimulatedDevice) -> None:
            with contextlib.suppress(KeelError):  # unreachable now: it moves at its next handshake instead
                await member.device.sync_loop.handshake()

        await asyncio.gather(*(again(member) for member in online))
        self.watch_versions()
        return {m.device.device_id: m.device.replica.local_version("task") for m in online}

    # ------------------------------------------------------------ counters and the end

    def counters(self) -> FleetCounters:
        """Totals now."""
        written = acknowledged = pending = quarantined = online = connected = retries = handshakes = repaired = 0
        for member in self.members.values():
            device = member.device
            stats = device.sync_loop.stats
            written += member.writes
            acknowledged += stats.ops_acknowledged
            quarantined += stats.ops_quarantined
            pending += device.replica.count(OpStatus.PENDING)
            online += device.is_online
            connected += device.sync_loop.state is SyncState.ONLINE
            retries += stats.transient_failures + stats.backpressure_waits
            handshakes += stats.handshakes
            repaired += stats.entities_repaired
        return FleetCounters(
            written, acknowledged, pending, quarantined, online, connected, retries, handshakes, repaired
        )

    async def bring_all_online(self) -> None:
        """The final phase: every device comes back."""
        await asyncio.gather(
            *(self._go_online(m) for m in self.members.values() if not m.device.is_online),
        )

    async def drain(self, timeout_s: float) -> list[str]:
        """Wait until every device has nothing pending and has pulled everything; ids of those that did not."""

        async def one(member: SimulatedDevice) -> str | None:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    await member.device.wait_synced(max(1.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
                except KeelError as error:
                    _log.warning("drain: retrying", device=member.device.device_id, error=str(error))
                    await asyncio.sleep(1.0)
                    continue
                return None
            return member.device.device_id

        stuck = await asyncio.gather(*(one(m) for m in self.members.values()))
        return sorted(s for s in stuck if s is not None)

    async def settle_watches(self, timeout_s: float = 30.0) -> None:
        """Wait for catch-up watches and re-renders still running (cancelled after `timeout_s`)."""
        pending = [m.catch_up for m in self.members.values() if m.catch_up is not None and not m.catch_up.done()]
        pending += list(self._repairs)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def stop_syncing(self) -> None:
        """Stop every sync loop (the state is then fixed for the final comparison)."""
        await asyncio.gather(*(self._stop(m) for m in self.members.values()))

    async def _stop(self, member: SimulatedDevice) -> None:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await member.device.sync_loop.stop()
        except TimeoutError:
            member.stop_timeouts += 1
            _log.warning("device did not stop syncing", device=member.device.device_id, timeout_s=STOP_TIMEOUT_S)

    async def close(self) -> None:
        """Close every device (stores and connections)."""
        for task in list(self._repairs):
            task.cancel()
        for member in self.members.values():
            if member.catch_up is not None and not member.catch_up.done():
                member.catch_up.cancel()
        for member in self.members.values():
            # Closing what is left; the run's outcome is decided.
            with contextlib.suppress(KeelError, OSError, TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await member.device.close()
