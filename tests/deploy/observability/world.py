"""A small, known world on the real services for the observability tests.

A gateway and a projector in this process (each with its own names), three devices, two rounds of
concurrent offline edits (three conflict decisions: task hot-1 title and description, task hot-2 title), one
undecodable record on the task topic (one dead letter), and a device that never pulls (a backlog).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.projector import Projector
from keel.event_log import OutgoingRecord
from keel.kafka_adapter import AioKafkaLogWriter
from keel.settings import Settings
from producers.device import Device
from producers.gateway.service import GatewayServer
from projections.pg_adapter import Pool, connect_pool
from projections.sql_migrations import quote_ident
from tests.producers.live import ENROLL_SECRET, LIVE, VERSIONS, live_settings
from tests.support.services import Services

CONFLICTS = {("task", "hot-1"): 2, ("task", "hot-2"): 1}
FIELD_CONFLICTS = {("task", "title"): 2, ("task", "description"): 1}


@dataclass
class World:
    """What the tests look at."""

    settings: Settings
    pool: Pool
    gateway_url: str
    projector: Projector
    devices: list[Device]
    ops: int  # ops the devices wrote (all accepted)

    @property
    def projector_url(self) -> str:
        """Base URL of the projector's health endpoint."""
        return f"http://127.0.0.1:{self.projector.health.port}"

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """One value; `{schema}` is the world's schema."""
        return await self.pool.fetchval(sql.replace("{schema}", quote_ident(self.settings.pg_schema)), *args)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60.0) -> None:
    """Poll until `check` holds."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def _enroll(url: str, path: Path, device_id: str) -> Device:
    return await Device.enroll(
        path,
        url,
        tenant_id="acme",
        enrollment_secret=ENROLL_SECRET,
        versions=VERSIONS,
        device_id=device_id,
        config=LIVE,
    )


@asynccontextmanager
async def observed_world(services: Services, tmp_path: Path, **overrides: Any) -> AsyncIterator[World]:
    """Build the world, wait until it is projected, yield it; everything stops after the block."""
    settings = live_settings(services, **overrides)
    pool = await connect_pool(settings.database_url, max_size=2)
    server = GatewayServer(settings)
    projector = Projector(settings, health_port=0, lag_sample_s=0.5)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    devices: list[Device] = []
    try:
        url = await server.start()
        task = asyncio.create_task(projector.run(stop), name="world-projector")
        await asyncio.wait_for(projector.ready_event.wait(), 60)
        tag = settings.topic_prefix
        alice = await _enroll(url, tmp_path / "alice.db", f"alice-{tag}")
        bob = await _enroll(url, tmp_path / "bob.db", f"bob-{tag}")
        carol = await _enroll(url, tmp_path / "carol.db", f"carol-{tag}")
        devices += [alice, bob, carol]
        # Concurrent offline edits: neither device has seen the other's write when it makes its own.
        alice.upsert("task", "hot-1", {"title": "alice's title", "description": "alice's words"})
        bob.upsert("task", "hot-1", {"title": "bob's title", "description": "bob's words"})
        alice.upsert("task", "hot-2", {"title": "alice again"})
        bob.upsert("task", "hot-2", {"title": "bob again"})
        alice.upsert("task", "calm-1", {"title": "nobody argues"})
        await carol.sync()  # handshakes and pulls once, then never again: its backlog grows
        await alice.sync()
        await bob.sync()
        writer = AioKafkaLogWriter(settings)
        await writer.start()
        try:
            await writer.write([OutgoingRecord(settings.topic_for("task"), b"garbage", b"not avro at all")])
        finally:
            await writer.stop()

        async def projected() -> bool:
            applied = await pool.fetchval(f"SELECT count(*) FROM {quote_ident(settings.pg_schema)}.applied_ops")
            decided = await pool.fetchval(f"SELECT count(*) FROM {quote_ident(settings.pg_schema)}.conflict_decisions")
            return bool(
                applied == 5
                and decided == 3
                and projector.supervisor
                and projector.supervisor.runtime
                and projector.supervisor.runtime.stats.dead_lettered == 1
            )

        await until(projected, "5 ops, 3 decisions and 1 dead letter projected")
        await alice.sync()
        await bob.sync()
        yield World(settings, pool, url, projector, devices, 5)
    finally:
        for device in devices:
            await device.close()
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 60)
        await server.stop()
        await pool.close()
