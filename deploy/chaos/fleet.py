"""The device scenarios' rig: a projector and a gateway as child processes, and SDK devices that write.

`open_service_rig` starts `keel run projector` and `keel run gateway` for the run (the gateway on a fixed
port, so a restarted instance is found at the same URL) and opens a pool and a registry client for the
verdict. `ChaosFleet` enrolls real SDK devices (`producers.device.Device`, SQLite stores in the run's
folder), optionally with a wall clock skewed by some milliseconds (their hybrid clocks read it) and
behind a URL of their own (a Toxiproxy proxy), makes them write, drains them and gathers their evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumers.projector import change_topics, topic_specs
from deploy.chaos.context import ChaosRun
from deploy.chaos.probes import wait_caught_up
from deploy.chaos.verdict import Verdict, judge
from deploy.demo.services import ServiceProcess
from deploy.verification.evidence import DeviceEvidence, device_evidence
from keel.errors import KeelError, TransientError
from keel.hlc import wall_clock_ms
from keel.kafka_adapter import ensure_topics
from keel.settings import Settings
from producers.device import Device, SyncConfig
from producers.device.gateway_client import GatewayClient
from producers.device.replica import SECRET, Replica
from producers.device.sqlite_store_adapter import SqliteDeviceStore
from producers.device.store import OpStatus
from producers.wire import EnrollRequest
from projections.pg_adapter import Pool
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["CHAOS_SYNC", "ChaosFleet", "ServiceRig", "open_service_rig"]

VERSIONS = {"task": [1, 2], "project": [1], "comment": [1]}
STOP_TIMEOUT_S = 15.0  # bounded: on 3.11 a sync worker may not stop when cancelled (CPython gh-86296)
CHAOS_SYNC = SyncConfig(
    long_poll_s=5.0,
    idle_recheck_s=2.0,
    digest_interval_s=None,
    backoff_base_s=0.1,
    backoff_cap_s=2.0,
    request_timeout_s=5.0,
)


@dataclass
class ServiceRig:
    """A projector and a gateway of the run, and clients for the verdict."""

    settings: Settings
    pool: Pool
    registry: ConfluentSchemaRegistry
    projector: ServiceProcess
    gateway: ServiceProcess
    url: str

    async def settle(self, fleet: ChaosFleet, timeout_s: float) -> tuple[list[str], float | None]:
        """Devices push everything, the projector applies everything, devices pull it: (stuck devices, catch-up s)."""
        began = time.monotonic()
        stuck = await fleet.drain(timeout_s)
        left = max(10.0, timeout_s - (time.monotonic() - began))
        caught = await wait_caught_up(self.pool, self.settings, change_topics(self.settings), timeout_s=left)
        stuck = sorted(set(stuck) | set(await fleet.drain(max(10.0, timeout_s - (time.monotonic() - began)))))
        return stuck, caught

    async def verdict(self, devices: Sequence[DeviceEvidence]) -> Verdict:
        """The checker over the log, the projection and what devices hold."""
        return await judge(self.settings, self.pool, self.registry, devices=devices)


async def open_service_rig(
    run: ChaosRun, *, settings: Settings | None = None, gateway_env: Mapping[str, str] | None = None
) -> ServiceRig:
    """Create the run's topics, start its projector and gateway, open the clients (all closed with the run)."""
    chosen = settings or run.settings
    await ensure_topics(chosen, topic_specs(chosen))
    pool = await run.pool(dsn=chosen.database_url)
    registry = ConfluentSchemaRegistry(chosen.registry_url)
    run.on_cleanup(registry.close)
    projector = run.projector("projector", settings=chosen, KEEL_LOG_LEVEL="WARNING")
    gateway, url = run.gateway("gateway", settings=chosen, **dict(gateway_env or {}))
    await projector.start()
    await gateway.start()
    return ServiceRig(chosen, pool, registry, projector, gateway, url)


def _skewed(skew_ms: int) -> Callable[[], int]:
    def wall() -> int:
        return wall_clock_ms() + skew_ms

    return wall


@dataclass
class ChaosFleet:
    """SDK devices of the run."""

    run: ChaosRun
    url: str
    enrollment_secret: str
    config: SyncConfig = field(default_factory=lambda: CHAOS_SYNC)
    devices: list[Device] = field(default_factory=list)
    skews_ms: dict[str, int] = field(default_factory=dict)
    stop_timeouts: int = 0

    @property
    def folder(self) -> Path:
        """Where the devices' SQLite stores live."""
        return self.run.folder / "devices"

    async def enroll(self, tenant_id: str, *, skew_ms: int = 0, url: str | None = None, signed: bool = True) -> Device:
        """Enroll one device (its store in the run's folder); a skewed wall clock needs `signed=False`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = url or self.url
        path = self.folder / f"device-{len(self.devices)}.db"
        for attempt in range(10):
            try:
                if signed and not skew_ms:
                    device = await Device.enroll(
                        path,
                        target,
                        tenant_id=tenant_id,
                        enrollment_secret=self.enrollment_secret,
                        versions=VERSIONS,
                        config=self.config,
                    )
                else:
                    device = await self._enroll_skewed(path, target, tenant_id, skew_ms)
                break
            except TransientError:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
        self.devices.append(device)
        self.skews_ms[device.device_id] = skew_ms
        return device

    async def _enroll_skewed(self, path: Path, url: str, tenant_id: str, skew_ms: int) -> Device:
        # Device.enroll would build the same replica; composed here to give its clock a skewed wall.
        client = GatewayClient(url, timeout_s=self.config.request_timeout_s)
        try:
            enrolled = await client.enroll(EnrollRequest(tenant_id=tenant_id, enrollment_secret=self.enrollment_secret))
        except BaseException:
            await client.aclose()
            raise
        store = SqliteDeviceStore(path)
        replica = Replica(
            store,
            tenant_id=enrolled.tenant_id,
            device_id=enrolled.device_id,
            supported_versions=VERSIONS,
            wall=_skewed(skew_ms),
        )
        replica.set_meta({SECRET: enrolled.device_secret})
        return Device(replica, client, self.config)

    async def go_offline(self, device: Device) -> None:
        """Stop the device's sync loop (bounded; a loop that does not stop is counted and left running)."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await device.go_offline()
        except TimeoutError:
            self.stop_timeouts += 1

    async def drain(self, timeout_s: float, devices: Sequence[Device] | None = None) -> list[str]:
        """Until each device has nothing pending and has pulled everything; ids of those that did not."""

        async def one(device: Device) -> str | None:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    await device.wait_synced(max(1.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
                except KeelError:
                    await asyncio.sleep(0.5)
                    continue
                return None
            return device.device_id

        stuck = await asyncio.gather(*(one(d) for d in devices or self.devices))
        return sorted(s for s in stuck if s is not None)

    def evidence(self) -> list[DeviceEvidence]:
        """What every device holds (local reads)."""
        return [device_evidence(d) for d in self.devices]

    def pending(self) -> int:
        """Ops waiting on all devices."""
        return sum(d.replica.count(OpStatus.PENDING) for d in self.devices)

    async def close(self) -> None:
        """Stop and close every device (bounded)."""
        for device in self.devices:
            with contextlib.suppress(KeelError, OSError, TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await device.close()


async def write_for(device: Device, seconds: float, rng: Any, *, shared: int = 4, rate_per_s: float = 8.0) -> int:
    """A user at work for `seconds`: upserts of own and shared tasks, the odd delete; how many writes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    writes = 0
    while loop.time() < deadline:
        own = rng.random() < 0.5
        entity = f"{device.device_id[:8]}-{rng.randrange(6)}" if own else f"shared-{rng.randrange(shared)}"
        try:
            if rng.random() < 0.08 and device.get("task", entity) is not None:
                device.delete("task", entity)
            else:
                device.upsert(
                    "task", entity, {"title": f"{device.device_id[:6]} {writes}", "priority": rng.randrange(4)}
                )
        except KeelError:
            continue
        writes += 1
        await asyncio.sleep(rng.expovariate(rate_per_s))
    return writes
