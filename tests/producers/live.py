"""Keel on the real services for integration tests: an in-process (or subprocess) gateway, an in-process
projector, devices, and the checks the fault tests share (convergence, exactly-once in PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from consumers.projector import Projector
from keel.kafka_adapter import client_options
from keel.settings import Settings
from producers.device import Device, SyncConfig
from producers.device.store import OpStatus
from producers.gateway.gateway import Gateway
from producers.gateway.service import GatewayServer
from projections.pg_adapter import Pool, connect_pool
from projections.sql_migrations import quote_ident
from tests.support.services import Services, kafka_security_env

ENROLL_SECRET = "integration-enrollment-secret"
LIVE = SyncConfig(
    long_poll_s=2.0,
    idle_recheck_s=2.0,
    digest_interval_s=None,
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
    request_timeout_s=5.0,
)
VERSIONS = {"task": [1, 2], "project": [1], "comment": [1]}


def live_settings(services: Services, **overrides: Any) -> Settings:
    """Settings of one test: its own topic prefix, PostgreSQL schema and consumer group."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "topic_prefix": f"it-{tag}",
        "pg_schema": f"it_{tag}",
        "consumer_group": f"it-{tag}",
        "gateway_enrollment_secret": ENROLL_SECRET,
        "gateway_outbox_poll_s": 0.1,
        "gateway_stream_heartbeat_s": 2.0,
        "gateway_produce_timeout_s": 10.0,
        "change_topic_partitions": 2,
    }
    values.update(overrides)
    return services.settings(**values)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60.0) -> None:
    """Poll `check` until it holds; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class LiveKeel:
    """A projector in this process, a gateway at `url`, and a pool for assertions."""

    settings: Settings
    pool: Pool
    url: str = ""
    devices: list[Device] = field(default_factory=list)
    server: GatewayServer | None = None

    @property
    def gateway(self) -> Gateway:
        """The in-process gateway (for tests that reconfigure it)."""
        assert self.server is not None
        assert self.server.gateway is not None
        return self.server.gateway

    async def device(
        self,
        path: Path,
        *,
        tenant_id: str = "acme",
        versions: Mapping[str, Sequence[int]] | None = None,
        config: SyncConfig | None = None,
        url: str | None = None,
    ) -> Device:
        """Enroll a device (closed with the fixture)."""
        device = await Device.enroll(
            path,
            url or self.url,
            tenant_id=tenant_id,
            enrollment_secret=ENROLL_SECRET,
            versions=versions or VERSIONS,
            config=config or LIVE,
        )
        self.devices.append(device)
        return device

    async def applied_seqs(self, device_id: str) -> list[int]:
        """Every seq of a device in the projector's dedup table (one row per applied op)."""
        rows = await self.pool.fetch(
            f"SELECT device_seq FROM {quote_ident(self.settings.pg_schema)}.applied_ops WHERE device_id = $1 "
            "ORDER BY device_seq",
            device_id,
        )
        return [int(row["device_seq"]) for row in rows]

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of a query; `{schema}` is the test's schema."""
        return list(await self.pool.fetch(sql.replace("{schema}", quote_ident(self.settings.pg_schema)), *args))

    async def record_count(self, entity_type: str) -> int:
        """How many records the change topic of an entity holds."""
        topic = self.settings.topic_for(entity_type)
        consumer = AIOKafkaConsumer(**client_options(self.settings))
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(self.settings.change_topic_partitions)]
            ends = await consumer.end_offsets(partitions)
        finally:
            await consumer.stop()
        return sum(ends.values())

    async def wait_projected(self, device: Device, timeout_s: float = 60.0) -> None:
        """Until every op the gateway acknowledged for `device` is in applied_ops."""
        accepted = sent_seqs(device)

        async def done() -> bool:
            return set(accepted) <= set(await self.applied_seqs(device.device_id))

        await eventually(done, f"{len(accepted)} ops of {device.device_id} in PostgreSQL", timeout_s)

    async def assert_exactly_once(self, devices: Sequence[Device]) -> None:
        """Every acknowledged op is in PostgreSQL exactly once, and nothing else of these devices is."""
        for device in devices:
            await self.wait_projected(device)
            applied = await self.applied_seqs(device.device_id)
            assert len(applied) == len(set(applied))
            assert applied == sent_seqs(device), f"{device.device_id}: PostgreSQL holds other seqs than acknowledged"

    async def assert_converged(self, devices: Sequence[Device], entity_types: Sequence[str] = ("task",)) -> None:
        """Devices agree with each other and with the server (digest exchange reports no mismatch)."""
        for entity_type in entity_types:
            digests = {device.digest(entity_type) for device in devices}
            assert len(digests) == 1, f"devices disagree on {entity_type}"
        for device in devices:
            matched = await device.check_digests()
            assert all(matched.get(t, False) for t in entity_types), f"{device.device_id} differs from the server"


def sent_seqs(device: Device) -> list[int]:
    """Seqs the gateway acknowledged as accepted (sent), in order."""
    with device.replica.store.transaction() as tx:
        return [op.seq for op in tx.ops(OpStatus.SENT)]


async def settle(devices: Sequence[Device], timeout_s: float = 60.0) -> None:
    """Wait until no device has anything pending and each has pulled everything."""
    await asyncio.gather(*(device.wait_synced(timeout_s) for device in devices))


@asynccontextmanager
async def projector(settings: Settings) -> AsyncIterator[Projector]:
    """A projector running in this event loop."""
    stop = asyncio.Event()
    running = Projector(settings, health_port=0)
    task = asyncio.create_task(running.run(stop), name="test-projector")
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def live_keel(services: Services, *, gateway: bool = True, **overrides: Any) -> AsyncIterator[LiveKeel]:
    """Projector (and, unless `gateway=False`, an in-process gateway) for one test."""
    settings = live_settings(services, **overrides)
    pool = await connect_pool(settings.database_url, max_size=2)
    server = GatewayServer(settings) if gateway else None
    keel = LiveKeel(settings, pool, server=server)
    try:
        if server is not None:
            keel.url = await server.start()
        async with projector(settings):
            try:
                yield keel
            finally:
                for device in keel.devices:
                    await device.close()
    finally:
        if server is not None:
            await server.stop()
        await pool.close()


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class GatewayProcess:
    """`keel run gateway` as a child process (so a test can SIGKILL it)."""

    def __init__(self, settings: Settings, port: int, log: Path, **env: str) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """KEEL_* variables carrying the test's settings."""
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "KEEL_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
                "KEEL_REGISTRY_URL": s.registry_url,
                "KEEL_DATABASE_URL": s.database_url,
                "KEEL_TOPIC_PREFIX": s.topic_prefix,
                "KEEL_PG_SCHEMA": s.pg_schema,
                "KEEL_CHANGE_TOPIC_PARTITIONS": str(s.change_topic_partitions),
                "KEEL_GATEWAY_ENROLLMENT_SECRET": s.gateway_enrollment_secret or "",
                "KEEL_GATEWAY_OUTBOX_POLL_S": str(s.gateway_outbox_poll_s),
                "KEEL_LOG_LEVEL": "WARNING",
                **kafka_security_env(s),
            }
        )
        env.update(self._env)
        return env

    async def start(self, timeout_s: float = 60.0) -> None:
        """Spawn and wait until /healthz answers 200."""
        keel = Path(sys.executable).parent / "keel"
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 - a short spawn; the wait below is async
                [str(keel), "run", "gateway", "--port", str(self.port)],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    tail = self._log.read_text()[-2000:]
                    raise AssertionError(f"gateway exited with {self.process.returncode}: {tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway did not become healthy: {self._log.read_text()[-2000:]}")

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        """The exit code once the process ended."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("gateway process did not exit")
            await asyncio.sleep(0.05)
        return int(self.process.returncode)

    async def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 15 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await self.wait_exit(15)
        except AssertionError:
            self.process.kill()
            await self.wait_exit(5)


class Toxiproxy:
    """A proxy of this test's own on the shared Toxiproxy server (never touches other proxies)."""

    def __init__(self, api_url: str, upstream: str) -> None:
        self.api = api_url.rstrip("/")
        self.name = f"keel-test-{uuid.uuid4().hex[:10]}"
        self.upstream = upstream
        self.listen = ""
        self._http = httpx.AsyncClient(base_url=self.api, timeout=10.0)

    async def create(self) -> str:
        """Create the proxy on a free port; its URL."""
        response = await self._http.post(
            "/proxies", json={"name": self.name, "listen": "127.0.0.1:0", "upstream": self.upstream, "enabled": True}
        )
        response.raise_for_status()
        self.listen = response.json()["listen"]
        return f"http://{self.listen}"

    async def add(
        self, name: str, kind: str, attributes: dict[str, Any], *, stream: str = "downstream", toxicity: float = 1.0
    ) -> None:
        """Add a toxic."""
        body = {"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes}
        (await self._http.post(f"/proxies/{self.name}/toxics", json=body)).raise_for_status()

    async def set_enabled(self, enabled: bool) -> None:
        """Switch the proxy on or off (off: connections are cut and new ones refused)."""
        (await self._http.post(f"/proxies/{self.name}", json={"enabled": enabled})).raise_for_status()

    async def remove(self, name: str) -> None:
        """Remove a toxic."""
        (await self._http.delete(f"/proxies/{self.name}/toxics/{name}")).raise_for_status()

    async def close(self) -> None:
        """Delete the proxy and close the client."""
        try:
            await self._http.delete(f"/proxies/{self.name}")
        finally:
            await self._http.aclose()
