"""One contract, two device-key registries: the in-memory fake and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keel.errors import ValidationError
from projections.device_keys import DeviceKey, DeviceKeyRegistry, InMemoryDeviceKeyRegistry, key_for_seq
from projections.device_keys_pg_adapter import PgDeviceKeyRegistry
from projections.pg_adapter import connect_pool
from projections.sql_migrator_adapter import migrate
from tests.support.services import Services


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[DeviceKeyRegistry]:
    if request.param == "fake":
        yield InMemoryDeviceKeyRegistry()
        return
    services: Services = request.getfixturevalue("services")
    schema: str = request.getfixturevalue("pg_schema")
    pool = await connect_pool(services.database_url, max_size=2)
    try:
        await migrate(pool, schema)
        yield PgDeviceKeyRegistry(pool, schema)
    finally:
        await pool.close()


async def test_keys_are_kept_by_the_seq_they_sign_from(registry: DeviceKeyRegistry) -> None:
    first, second = DeviceKey("acme", "d-1", b"\x01" * 32), DeviceKey("acme", "d-1", b"\x02" * 32, from_seq=10)
    assert await registry.keys_of("d-1") == []
    await registry.register(first)
    await registry.register(first)  # the very same key again: a retried enrolment
    await registry.register(second)
    keys = await registry.keys_of("d-1")
    assert keys == [first, second]
    assert key_for_seq(keys, 9) == first
    assert key_for_seq(keys, 10) == second
    assert key_for_seq([second], 3) is None
    assert await registry.keys_of("d-2") == []


async def test_a_key_may_not_take_over_seqs_another_key_signs(registry: DeviceKeyRegistry) -> None:
    await registry.register(DeviceKey("acme", "d-1", b"\x01" * 32, from_seq=5))
    for intruder in (DeviceKey("acme", "d-1", b"\x03" * 32), DeviceKey("acme", "d-1", b"\x03" * 32, from_seq=5)):
        with pytest.raises(ValidationError, match="already has a key from seq 5"):
            await registry.register(intruder)
    assert [k.public_key for k in await registry.keys_of("d-1")] == [b"\x01" * 32]
