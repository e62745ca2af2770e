"""One contract, two device directories: the in-memory fake and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keel.errors import AuthError, ValidationError
from producers.gateway.devices import DeviceDirectory, InMemoryDeviceDirectory
from producers.gateway.devices_pg_adapter import PgDeviceDirectory
from tests.producers.gateway.pg import gateway_pool


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def directory(request: pytest.FixtureRequest) -> AsyncIterator[DeviceDirectory]:
    if request.param == "fake":
        yield InMemoryDeviceDirectory()
        return
    async with gateway_pool(request) as (pool, schema):
        yield PgDeviceDirectory(pool, schema)


async def test_an_enrolled_device_authenticates_with_its_secret_only(directory: DeviceDirectory) -> None:
    record, secret = await directory.enroll("acme", None, "laptop")
    assert (record.tenant_id, record.label) == ("acme", "laptop")
    assert len(record.device_id) == 36
    found = await directory.authenticate("acme", record.device_id, secret)
    assert found.device_id == record.device_id
    for tenant, device, attempt in (
        ("acme", record.device_id, secret + "x"),
        ("globex", record.device_id, secret),
        ("acme", "nobody", secret),
    ):
        with pytest.raises(AuthError, match="unknown device or wrong secret"):
            await directory.authenticate(tenant, device, attempt)


async def test_device_ids_are_unique_and_versions_are_remembered(directory: DeviceDirectory) -> None:
    record, _ = await directory.enroll("acme", "phone-7")
    with pytest.raises(ValidationError, match="already enrolled"):
        await directory.enroll("globex", "phone-7")
    await directory.record_handshake("phone-7", {"task": 2, "project": 1})
    stored = await directory.get("phone-7")
    assert stored is not None
    assert (stored.tenant_id, stored.versions) == ("acme", {"task": 2, "project": 1})
    assert await directory.get("phone-8") is None
    assert record.device_id == "phone-7"
