"""`keel run gateway`: the gateway on the real adapters, served by uvicorn.

Start-up: PostgreSQL pool and SQL migrations (projector 0NN and gateway 1NN files, so the gateway can
start first), change topics (created like the projector does when missing), schema registration, the
idempotent producer, and a connection LISTENing for the projector's outbox notifications (it reconnects
in the background, and polling covers its absence). Any of the others down at start fails the start with
a clear message: the process exits non-zero and its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from types import FrameType

import uvicorn

from keel.errors import ServiceUnavailableError
from keel.kafka_adapter import AioKafkaLogWriter, ensure_topics
from keel.logging import get_logger
from keel.settings import Settings
from keel.telemetry import configure_telemetry
from producers.gateway.app import build_app
from producers.gateway.devices_pg_adapter import PgDeviceDirectory
from producers.gateway.gateway import Gateway, GatewayPorts
from producers.gateway.outbox_signals_pg_adapter import PgOutboxSignals
from producers.gateway.push_ledger_pg_adapter import PgPushLedger
from producers.gateway.rollout_pg_adapter import PgRolloutFlags
from producers.gateway.signing_keys_pg_adapter import PgSigningKeyStore
from projections.device_keys_pg_adapter import PgDeviceKeyRegistry
from projections.outbox_pg_adapter import PgOutbox
from projections.pg_adapter import connect_pool
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import PROJECTOR_SQL
from projections.sql_migrator_adapter import migrate
from projections.topics import change_topic_specs
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["GATEWAY_SQL", "GatewayServer", "open_gateway", "run_gateway", "serve_gateway"]

GATEWAY_SQL = Path(__file__).parent / "sql"
_log = get_logger("gateway.service")


class _DrainingServer(uvicorn.Server):
    """uvicorn, but a shutdown signal first ends the gateway's long-polls and streams (else it waits for them)."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self._gateway = gateway

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Drain, then let uvicorn stop."""
        self._gateway.begin_drain()
        super().handle_exit(sig, frame)


async def open_gateway(settings: Settings) -> Gateway:
    """A `Gateway` on PostgreSQL, Kafka and the registry (not started: the app's lifespan starts it)."""
    configure_telemetry(
        "keel-gateway", settings.otel_exporter, settings.otel_endpoint, sample_ratio=settings.otel_sample_ratio
    )
    pool = await connect_pool(settings.database_url, max_size=settings.gateway_pg_pool_size)
    try:
        applied = await migrate(pool, settings.pg_schema, (PROJECTOR_SQL, GATEWAY_SQL))
        if applied:
            _log.info("sql migrations applied", schema=settings.pg_schema, migrations=applied)
        created = await ensure_topics(settings, change_topic_specs(settings))  # the projector's specs too
        if created:
            _log.info("topics created", topics=created)
    except BaseException:
        await pool.close()
        raise
    ports = GatewayPorts(
        directory=PgDeviceDirectory(pool, settings.pg_schema),
        ledger=PgPushLedger(pool, settings.pg_schema),
        writer=AioKafkaLogWriter(settings, request_timeout_ms=int(settings.gateway_produce_timeout_s * 1000)),
        registry=ConfluentSchemaRegistry(settings.registry_url),
        outbox=PgOutbox(pool, settings.pg_schema),
        states=PgProjectionStore(pool, settings.pg_schema),
        rollout=PgRolloutFlags(pool, settings.pg_schema),
        signing_keys=PgSigningKeyStore(pool, settings.pg_schema),
        device_keys=PgDeviceKeyRegistry(pool, settings.pg_schema),
        signals=PgOutboxSignals(settings.database_url, settings.pg_schema) if settings.gateway_outbox_signals else None,
    )
    return Gateway(ports, settings, on_stop=pool.close)


async def serve_gateway(settings: Settings, *, sock: socket.socket | None = None) -> None:
    """Run the gateway until SIGINT/SIGTERM (or cancellation); `sock` serves on a socket bound by the caller."""
    gateway = await open_gateway(settings)
    config = uvicorn.Config(
        build_app(gateway),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _DrainingServer(config, gateway)
    try:
        await server.serve(sockets=[sock] if sock is not None else None)
    finally:
        if gateway.lifecycle.state.value != "stopped":
            await gateway.stop()
    if not server.started:
        raise SystemExit(1)


class GatewayServer:
    """The gateway served by uvicorn inside a running event loop (tests, the demo); port 0 picks a free one."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self._host = host
        self._port = port
        self.gateway: Gateway | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self, *, timeout_s: float = 30.0) -> str:
        """Open the gateway, serve it, and return its base URL once it accepts requests."""
        self.gateway = await open_gateway(self.settings)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(self.gateway), log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="keel-gateway")
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                if self._task.done():
                    await self._task
                    raise ServiceUnavailableError("gateway", "uvicorn stopped during start-up")
                await asyncio.sleep(0.02)
        self.url = f"http://{self._host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving and close the gateway (idempotent)."""
        if self._server is not None and self._task is not None:
            if self.gateway is not None:
                self.gateway.begin_drain()
            self._server.should_exit = True
            await self._task
        self._server, self._task = None, None
        if self.gateway is not None and self.gateway.lifecycle.state.value != "stopped":
            await self.gateway.stop()


def run_gateway(settings: Settings) -> None:
    """Blocking entry point for the CLI."""
    asyncio.run(serve_gateway(settings))
