"""More devices pushing at once than the gateway has PostgreSQL connections: every push still completes."""

from __future__ import annotations

import asyncio

import pytest

from keel.event_log import InMemoryLog, InMemoryLogWriter
from keel.hlc import HlcTimestamp
from producers.gateway.backpressure import DeviceRateLimiter, ProducerBudget
from producers.gateway.op_verification import ChainVerifier
from producers.gateway.push import PushService
from producers.gateway.push_ledger_pg_adapter import PgPushLedger
from producers.gateway.service import GATEWAY_SQL
from producers.gateway.tokens import DeviceClaims
from producers.wire import PushRequest, WireEvent
from projections.device_keys_pg_adapter import PgDeviceKeyRegistry
from projections.pg_adapter import connect_pool
from projections.sql_migrations import PROJECTOR_SQL
from projections.sql_migrator_adapter import migrate
from schemas.envelope import ChangeEvent, Op, new_event_id
from schemas.event_encoder import EventEncoder
from schemas.registry import InMemorySchemaRegistry
from tests.support.services import Services

pytestmark = pytest.mark.integration

POOL_SIZE = 2
DEVICES = 6


def ops(device: str, first: int, count: int) -> list[dict[str, object]]:
    return [
        WireEvent.of(
            ChangeEvent(
                event_id=new_event_id(),
                tenant_id="acme",
                device_id=device,
                device_seq=seq,
                entity_type="task",
                entity_id=f"t-{seq}",
                op=Op.UPSERT,
                hlc=HlcTimestamp(1_000 + seq, 0, device),
                schema_version=2,
                payload={"title": f"op {seq}"},
                changed_fields=("title",),
            )
        ).model_dump(mode="json")
        for seq in range(first, first + count)
    ]


async def test_pushes_of_more_devices_than_connections_all_complete(services: Services, pg_schema: str) -> None:
    pool = await connect_pool(services.database_url, max_size=POOL_SIZE)
    try:
        await migrate(pool, pg_schema, (PROJECTOR_SQL, GATEWAY_SQL))
        log = InMemoryLog()
        log.create_topic("pool.task.changes")
        service = PushService(
            ledger=PgPushLedger(pool, pg_schema),
            writer=InMemoryLogWriter(log),
            encoder=EventEncoder(InMemorySchemaRegistry(), lambda entity: f"pool.{entity}.changes", auto_register=True),
            rate_limiter=DeviceRateLimiter(0, 0),
            budget=ProducerBudget(1 << 20),
            chains=ChainVerifier(PgDeviceKeyRegistry(pool, pg_schema)),  # reads each device's keys per push
        )

        async def device(name: str) -> int:
            acked = 0
            for first in (1, 6, 11):
                claims = DeviceClaims("acme", name, {"task": 2}, 0)
                acked = (await service.push(claims, PushRequest(ops=ops(name, first, 5)))).acked_seq
            return acked

        # Each push holds a connection for its ledger session; reading the device's keys inside it would need
        # a second one, and with every connection held by a session nothing would ever move again.
        async with asyncio.timeout(30):
            heads = await asyncio.gather(*(device(f"d-{index}") for index in range(DEVICES)))
        assert heads == [15] * DEVICES
        assert sum(len(partition) for partition in log.topics["pool.task.changes"]) == 15 * DEVICES
    finally:
        await pool.close()
