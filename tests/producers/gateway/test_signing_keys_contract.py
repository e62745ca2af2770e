"""One contract, two token signing-key stores: the in-memory fake and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from producers.gateway.signing_keys import InMemorySigningKeyStore, SigningKeyStore, new_signing_key
from producers.gateway.signing_keys_pg_adapter import PgSigningKeyStore
from tests.producers.gateway.pg import gateway_pool


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SigningKeyStore]:
    if request.param == "fake":
        yield InMemorySigningKeyStore()
        return
    async with gateway_pool(request) as (pool, schema):
        yield PgSigningKeyStore(pool, schema)


async def test_keys_round_trip_and_adding_a_kid_twice_keeps_the_first(store: SigningKeyStore) -> None:
    first = new_signing_key(1_000_000)
    await store.add(first)
    await store.add(first)
    [stored] = await store.keys()
    assert stored == first
    assert stored.private_key().public_key().public_bytes_raw() == first.private_key().public_key().public_bytes_raw()
    assert stored.is_active(1_000_000)
    assert not stored.is_active(999_999)


async def test_rotation_retires_every_other_key_in_one_step(store: SigningKeyStore) -> None:
    first, second = new_signing_key(1_000_000), new_signing_key(2_000_000)
    await store.add(first)
    await store.rotate_to(second, 2_000_000)
    keys = {key.kid: key for key in await store.keys()}
    assert keys[first.kid].retired_at_ms == 2_000_000
    assert keys[second.kid].retired_at_ms is None
    assert [key.kid for key in await store.keys()] == [first.kid, second.kid], "oldest first"


async def test_revocation_and_pruning(store: SigningKeyStore) -> None:
    first, second = new_signing_key(1_000_000), new_signing_key(2_000_000)
    await store.add(first)
    await store.rotate_to(second, 2_000_000)
    assert await store.revoke(second.kid, 3_000_000)
    assert not await store.revoke("nobody", 3_000_000)
    keys = {key.kid: key for key in await store.keys()}
    assert (keys[second.kid].revoked_at_ms, keys[second.kid].retired_at_ms) == (3_000_000, 3_000_000)
    assert await store.prune(2_500_000) == [first.kid]
    assert await store.prune(4_000_000) == [second.kid]
    assert await store.keys() == []
