"""`Device`: the SDK's front door for a desktop app (and the demo's fleet of simulated devices).

Local reads and writes never wait for the network: `upsert`/`delete` commit the change and its op
locally and return; the background sync loop pushes and pulls whenever the gateway is reachable.

    device = await Device.enroll("alice.db", "https://gw.example", tenant_id="acme",
                                 enrollment_secret=..., versions={"task": [1, 2]})
    await device.start()
    device.upsert("task", "t-1", {"title": "Write the report"})
    await device.go_offline(); ...; await device.go_online()
    device.digest("task"); device.quarantined(); device.status()
    await device.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from keel.errors import ConfigurationError
from keel.telemetry import configure_telemetry
from producers.device.gateway_client import GatewayClient
from producers.device.replica import DEVICE, SECRET, TENANT, ClockReport, Replica
from producers.device.signing import OpSigner
from producers.device.sqlite_store_adapter import SqliteDeviceStore
from producers.device.store import DeviceStore, LoggedOp, OpStatus
from producers.device.sync_loop import SyncConfig, SyncLoop, SyncState, SyncStats
from producers.wire import EnrollRequest
from schemas.envelope import ChangeEvent

__all__ = ["Device", "DeviceStatus"]


@dataclass(frozen=True)
class DeviceStatus:
    """A snapshot of a device's sync health for an app's status bar."""

    device_id: str
    state: SyncState
    pending: int
    sent: int
    quarantined: int
    cursor: str
    clock: ClockReport
    last_error: str | None
    stats: SyncStats


def _open_store(store: DeviceStore | Path | str) -> DeviceStore:
    return SqliteDeviceStore(store) if isinstance(store, Path | str) else store


class Device:
    """One enrolled device: a replica over a local store plus its sync loop."""

    def __init__(self, replica: Replica, client: GatewayClient, config: SyncConfig | None = None) -> None:
        # Traces must exist to propagate: without a provider an op would carry no trace context at all. The
        # first configuration in a process wins, so an app that configured its own keeps its name and exporter.
        configure_telemetry("keel-device")
        self.replica = replica
        self.client = client
        self.sync_loop = SyncLoop(replica, client, config=config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._online = False

    # ------------------------------------------------------------ construction

    @classmethod
    async def enroll(
        cls,
        store: DeviceStore | Path | str,
        gateway_url: str,
        *,
        tenant_id: str,
        enrollment_secret: str,
        versions: Mapping[str, Sequence[int]],
        device_id: str | None = None,
        config: SyncConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Device:
        """Enroll a new device with the gateway and keep its credentials in the local store."""
        client = GatewayClient(gateway_url, transport=transport)
        signer = OpSigner.generate()  # the gateway registers its public half: every op is signed with it
        try:
            enrolled = await client.enroll(
                EnrollRequest(
                    tenant_id=tenant_id,
                    enrollment_secret=enrollment_secret,
                    device_id=device_id,
                    public_key=signer.public_key_hex,
                )
            )
        except BaseException:
            await client.aclose()
            raise
        opened = _open_store(store)
        replica = Replica(
            opened, tenant_id=enrolled.tenant_id, device_id=enrolled.device_id, supported_versions=versions
        )
        with opened.transaction() as tx:
            tx.set_meta(SECRET, enrolled.device_secret)
            signer.save(tx)
        replica.signer = signer
        return cls(replica, client, config)

    @classmethod
    def open(
        cls,
        store: DeviceStore | Path | str,
        gateway_url: str,
        *,
        versions: Mapping[str, Sequence[int]],
        config: SyncConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Device:
        """Reopen an enrolled device from its store (after a restart or a crash)."""
        opened = _open_store(store)
        with opened.transaction() as tx:
            tenant_id, device_id = tx.get_meta(TENANT), tx.get_meta(DEVICE)
        if not tenant_id or not device_id:
            opened.close()
            raise ConfigurationError("this store holds no enrolled device: use Device.enroll")
        replica = Replica(opened, tenant_id=tenant_id, device_id=device_id, supported_versions=versions)
        return cls(replica, GatewayClient(gateway_url, transport=transport), config)

    # ------------------------------------------------------------ local data (never waits for the network)

    @property
    def device_id(self) -> str:
        """This device's id."""
        return self.replica.device_id

    @property
    def tenant_id(self) -> str:
        """The tenant this device belongs to."""
        return self.replica.tenant_id

    def _nudge(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.sync_loop.nudge()
        else:
            loop.call_soon_threadsafe(self.sync_loop.nudge)

    def upsert(self, entity_type: str, entity_id: str, fields: Mapping[str, Any]) -> ChangeEvent:
        """Write fields of an entity locally (durable on return) and queue the op."""
        event = self.replica.upsert(entity_type, entity_id, fields)
        self._nudge()
        return event

    def delete(self, entity_type: str, entity_id: str) -> ChangeEvent:
        """Delete an entity locally (durable on return) and queue the tombstone."""
        event = self.replica.delete(entity_type, entity_id)
        self._nudge()
        return event

    def get(self, entity_type: str, entity_id: str) -> dict[str, Any] | None:
        """An entity's visible values (None if absent or deleted)."""
        return self.replica.get(entity_type, entity_id)

    def rows(self, entity_type: str) -> list[tuple[str, dict[str, Any]]]:
        """Every live entity of a type."""
        return self.replica.rows(entity_type)

    def digest(self, entity_type: str) -> str:
        """The digest of this device's live rows of a type (comparable with the server's)."""
        return self.replica.digest(entity_type)

    def quarantined(self) -> list[LoggedOp]:
        """Ops the gateway refused, with reasons."""
        return self.replica.quarantined()

    def clock(self) -> ClockReport:
        """Clock offset to the server (from the last handshake) and the hybrid logical time."""
        return self.replica.clock_report()

    def status(self) -> DeviceStatus:
        """Sync health."""
        return DeviceStatus(
            device_id=self.device_id,
            state=self.sync_loop.state,
            pending=self.replica.count(OpStatus.PENDING),
            sent=self.replica.count(OpStatus.SENT),
            quarantined=self.replica.count(OpStatus.QUARANTINED),
            cursor=self.replica.cursor,
            clock=self.replica.clock_report(),
            last_error=self.sync_loop.last_error,
            stats=self.sync_loop.stats,
        )

    # ------------------------------------------------------------ sync control

    async def start(self) -> None:
        """Go online: run the sync loop in the background."""
        self._loop = asyncio.get_running_loop()
        self._online = True
        await self.sync_loop.start()

    async def go_offline(self) -> None:
        """Stop talking to the gateway (writes keep working); whatever was in flight is redone when back online."""
        self._online = False
        await self.sync_loop.stop(SyncState.OFFLINE)

    async def go_online(self) -> None:
        """Resume syncing."""
        await self.start()

    @property
    def is_online(self) -> bool:
        """Whether the app wants the device online."""
        return self._online

    async def sync(self) -> None:
        """One explicit round: push everything pending, pull until caught up (raises on failure)."""
        await self.sync_loop.sync()

    async def wait_synced(self, timeout_s: float = 30.0) -> None:
        """Wait until nothing is pending and the outbox has nothing new."""
        await self.sync_loop.wait_synced(timeout_s)

    async def check_digests(self) -> dict[str, bool]:
        """Compare digests with the server now (repairing mismatches); entity type → matched before repair."""
        return await self.sync_loop.check_digests()

    async def close(self) -> None:
        """Stop syncing and release the store and connections."""
        await self.sync_loop.stop()
        await self.client.aclose()
        self.replica.store.close()
