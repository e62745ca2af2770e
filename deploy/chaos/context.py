"""One chaos run: its names, its folder, its seeded random generator, and its services as child processes.

A run id names the topic prefix (`chaos-<id>`), the PostgreSQL schema (`chaos_<id>`) and the consumer group,
so a run touches nothing but its own data on the shared stack. Services run as `keel run …` child
processes (`deploy/demo/services.py`) that a scenario can SIGKILL, SIGSTOP and restart; each logs to the
run's folder `.keel/chaos/<id>/`. `cleanup` stops every service and closes every client the run opened;
on success the run's topics, schema and consumer groups are dropped unless asked to keep them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from deploy.chaos.proxies import OwnProxy
from deploy.chaos.scenario import Size
from deploy.demo.services import ServiceProcess, free_port
from keel.errors import ConfigurationError, ServiceUnavailableError
from keel.kafka_adapter import delete_groups, delete_topics_under
from keel.logging import get_logger
from keel.settings import Settings
from projections.pg_adapter import Pool, connect_pool, pg_errors
from projections.sql_migrations import in_schema

__all__ = [
    "ChaosRun",
    "drop_run_data",
    "exited",
    "run_names",
    "start_armed",
    "wait_until",
]

_log = get_logger("chaos")
ENROLLMENT_SECRET_BYTES = 24


def run_names(settings: Settings, scenario: str) -> tuple[str, Settings]:
    """A fresh run id and settings naming the run's own topics, schema and consumer group."""
    stamp = datetime.now(UTC).strftime("%m%d%H%M%S")
    run_id = f"{scenario.lower()}-{stamp}{secrets.token_hex(2)}"
    named = settings.model_copy(
        update={
            "topic_prefix": f"chaos-{run_id}",
            "pg_schema": f"chaos_{run_id.replace('-', '_')}",
            "consumer_group": f"chaos-{run_id}",
        }
    )
    return run_id, named


@dataclass
class ChaosRun:
    """The run a scenario plays in: names, sizes, randomness, services and what to close at the end."""

    scenario: str
    size: Size
    seed: int
    run_id: str
    settings: Settings  # the run's own: prefix, schema, group (endpoints of the shared stack)
    folder: Path
    toxiproxy_url: str | None = None
    enrollment_secret: str = field(default_factory=lambda: secrets.token_urlsafe(ENROLLMENT_SECRET_BYTES))
    started: float = field(default_factory=time.monotonic)
    exits: AsyncExitStack = field(default_factory=AsyncExitStack)
    services: list[ServiceProcess] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the scenario wants people to know (in the JSON)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def quick(self) -> bool:
        """Whether this is the bounded run of `make test`."""
        return self.size is Size.QUICK

    def pick(self, quick: float, full: float) -> float:
        """A size-dependent figure."""
        return quick if self.quick else full

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def note(self, text: str) -> None:
        """Something worth reading in the run's JSON (and the log)."""
        self.notes.append(text)
        _log.info("chaos note", run=self.run_id, note=text)

    # ------------------------------------------------------------ clients

    async def pool(self, *, max_size: int = 4, dsn: str | None = None) -> Pool:
        """A PostgreSQL pool closed with the run."""
        opened = await connect_pool(dsn or self.settings.database_url, max_size=max_size, application_name="keel-chaos")
        self.exits.push_async_callback(opened.close)
        return opened

    async def own_proxy(self, what: str, upstream: str) -> OwnProxy:
        """A Toxiproxy proxy of this run in front of `upstream` (deleted with the run)."""
        if not self.toxiproxy_url:
            raise ConfigurationError(f"{self.scenario} needs Toxiproxy: start the stack with --with-toxiproxy")
        proxy = OwnProxy(self.toxiproxy_url, f"keel-chaos-{self.run_id}-{what}", upstream)
        try:
            await proxy.create()
        except BaseException:
            await proxy.close()
            raise
        self.on_cleanup(proxy.close)
        return proxy

    def on_cleanup(self, callback: Callable[[], Awaitable[object]]) -> None:
        """Run `callback` when the run ends (last registered, first run)."""
        self.exits.push_async_callback(callback)

    # ------------------------------------------------------------ services

    def service_env(self, settings: Settings | None = None) -> dict[str, str]:
        """`KEEL_*` variables of a child service of this run."""
        s = settings or self.settings
        return {
            "KEEL_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "KEEL_REGISTRY_URL": s.registry_url,
            "KEEL_DATABASE_URL": s.database_url,
            "KEEL_TOPIC_PREFIX": s.topic_prefix,
            "KEEL_PG_SCHEMA": s.pg_schema,
            "KEEL_CONSUMER_GROUP": s.consumer_group,
            "KEEL_CHANGE_TOPIC_PARTITIONS": str(s.change_topic_partitions),
            "KEEL_CHANGE_TOPIC_REPLICATION": str(s.change_topic_replication),
            "KEEL_LOG_LEVEL": "INFO",
            "KEEL_LOG_JSON": "true",
            "KEEL_OTEL_EXPORTER": "none",
            **s.kafka_security_environment(),
        }

    def projector(self, name: str = "projector", *, settings: Settings | None = None, **env: str) -> ServiceProcess:
        """A `keel run projector` child (not started); `env` adds or overrides `KEEL_*` variables."""
        port = free_port()
        variables = self.service_env(settings) | {"KEEL_PROJECTOR_HEALTH_PORT": str(port)} | env
        service = ServiceProcess(
            name, ["run", "projector"], variables, self.folder / f"{name}.log", f"http://127.0.0.1:{port}/health"
        )
        self.services.append(service)
        return service

    def gateway(
        self, name: str = "gateway", *, settings: Settings | None = None, **env: str
    ) -> tuple[ServiceProcess, str]:
        """A `keel run gateway` child (not started) and its base URL."""
        port = free_port()
        variables = (
            self.service_env(settings)
            | {
                "KEEL_GATEWAY_ENROLLMENT_SECRET": self.enrollment_secret,
                "KEEL_GATEWAY_PRODUCE_TIMEOUT_S": "3",  # a broken Kafka path answers 503 after 3 s, not 20
                "KEEL_GATEWAY_OUTBOX_POLL_S": "0.25",
                "KEEL_GATEWAY_STREAM_HEARTBEAT_S": "5",
                "KEEL_GATEWAY_SIGNING_KEY_FILE": str(self.signing_key()),
            }
            | env
        )
        url = f"http://127.0.0.1:{port}"
        arguments = ["run", "gateway", "--host", "127.0.0.1", "--port", str(port)]
        service = ServiceProcess(name, arguments, variables, self.folder / f"{name}.log", f"{url}/healthz")
        self.services.append(service)
        return service, url

    def signing_key(self) -> Path:
        """The run's token signing key (shared by every gateway instance, so tokens survive a restart)."""
        path = self.folder / "gateway-signing.pem"
        if not path.exists():
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            key = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            path.write_bytes(key)
            path.chmod(0o600)
        return path

    async def stop_services(self) -> None:
        """SIGTERM every service still running (SIGKILL after a while); a stopped one SIGCONTed first."""
        for service in reversed(self.services):
            with contextlib.suppress(ProcessLookupError, OSError):
                if service.process is not None and service.process.poll() is None:
                    service.process.send_signal(signal.SIGCONT)  # a SIGSTOPped child cannot drain
            await service.stop(timeout_s=20.0)

    # ------------------------------------------------------------ the end

    async def close(self, *, drop_data: bool) -> None:
        """Stop services, close clients, and drop the run's schema and topics when asked."""
        try:
            await self.stop_services()
        finally:
            await self.exits.aclose()
        if drop_data:
            await drop_run_data(self.settings)


async def drop_run_data(settings: Settings) -> None:
    """Drop the run's PostgreSQL schema (and its snapshot/shadow schemas), its topics and its consumer groups."""
    pool = await connect_pool(settings.database_url, max_size=1, application_name="keel-chaos")
    try:
        async with pg_errors("drop the run's schemas"), pool.acquire() as connection:
            names = await connection.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR nspname LIKE $2",
                settings.pg_schema,
                settings.pg_schema.replace("_", r"\_") + r"\_%",
            )
            for row in names:
                await connection.execute(in_schema("DROP SCHEMA IF EXISTS {schema} CASCADE", row["nspname"]))
    finally:
        await pool.close()
    await delete_topics_under(settings, [settings.topic_prefix])
    await asyncio.to_thread(delete_groups, settings, [settings.consumer_group])


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float, every_s: float = 0.2
) -> float | None:
    """Poll `condition` until it holds; seconds it took, or None after `timeout_s`."""
    began = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - began
        if time.monotonic() - began > timeout_s:
            return None
        await asyncio.sleep(every_s)


async def exited(service: ServiceProcess, timeout_s: float) -> bool:
    """Whether a child service ends within `timeout_s` (it is not signalled: a failpoint kills it)."""
    deadline = time.monotonic() + timeout_s
    while service.is_running():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def start_armed(service: ServiceProcess) -> float | None:
    """Start a child armed with a kill failpoint: seconds to healthy, or None when the failpoint fired first.

    Work may be waiting for it (a backlog, devices retrying), so the failpoint can SIGKILL the process before
    its health endpoint ever answers. That is the kill the scenario asked for; any other death is an error.
    """
    try:
        return await service.start()
    except ServiceUnavailableError:
        if service.process is None or service.process.returncode != -signal.SIGKILL:
            raise
        return None
