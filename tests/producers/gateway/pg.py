"""A migrated PostgreSQL schema for the gateway's adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from producers.gateway.service import GATEWAY_SQL
from projections.pg_adapter import Pool, connect_pool
from projections.sql_migrations import PROJECTOR_SQL
from projections.sql_migrator_adapter import migrate
from tests.support.services import Services


@asynccontextmanager
async def gateway_pool(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Pool, str]]:
    """A pool and a schema of this test with the projector's and the gateway's migrations applied.

    Fixtures parametrised fake/real call this from their body, so fake runs never need the services.
    """
    services: Services = request.getfixturevalue("services")
    schema: str = request.getfixturevalue("pg_schema")
    pool = await connect_pool(services.database_url, max_size=4)
    try:
        applied = await migrate(pool, schema, (PROJECTOR_SQL, GATEWAY_SQL))
        assert {"101_devices.sql", "102_push_ledger.sql"} <= set(applied)
        yield pool, schema
    finally:
        await pool.close()
