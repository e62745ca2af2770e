"""One contract, two push ledgers: the in-memory fake and PostgreSQL (advisory locks, atomic commits)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from keel.errors import SequenceError
from producers.gateway.push_ledger import InMemoryPushLedger, Outcome, PushLedger, SeqOutcome
from producers.gateway.push_ledger_pg_adapter import PgPushLedger
from tests.producers.gateway.pg import gateway_pool


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[PushLedger]:
    if request.param == "fake":
        yield InMemoryPushLedger()
        return
    async with gateway_pool(request) as (pool, schema):
        yield PgPushLedger(pool, schema)


def accepted(seq: int) -> SeqOutcome:
    return SeqOutcome(seq, f"e-{seq}", Outcome.ACCEPTED)


async def test_outcomes_and_the_head_commit_together(ledger: PushLedger) -> None:
    assert await ledger.head("d-1") == 0
    async with ledger.session("acme", "d-1") as session:
        assert await session.head() == 0
        rejected = SeqOutcome(2, "e-2", Outcome.REJECTED, "invalid", "priority is 9", "priority")
        await session.record([accepted(1), rejected, SeqOutcome(3, "e-3", Outcome.ABANDONED)], 3)
    assert await ledger.head("d-1") == 3
    async with ledger.session("acme", "d-1") as session:
        assert await session.head() == 3
        found = await session.outcomes([1, 2, 3, 4])
    assert sorted(found) == [1, 2, 3]
    assert found[2] == SeqOutcome(2, "e-2", Outcome.REJECTED, "invalid", "priority is 9", "priority")
    assert found[3].outcome is Outcome.ABANDONED


async def test_a_session_that_fails_records_nothing(ledger: PushLedger) -> None:
    async def fail_after_recording() -> None:
        async with ledger.session("acme", "d-1") as session:
            await session.record([accepted(1)], 1)
            raise RuntimeError("the broker never acknowledged")

    with pytest.raises(RuntimeError):
        await fail_after_recording()
    assert await ledger.head("d-1") == 0
    async with ledger.session("acme", "d-1") as session:
        assert await session.outcomes([1]) == {}


async def test_the_head_never_moves_back(ledger: PushLedger) -> None:
    async with ledger.session("acme", "d-1") as session:
        await session.record([accepted(1), accepted(2)], 2)
    async with ledger.session("acme", "d-1") as session:
        with pytest.raises(SequenceError, match="may not move back"):
            await session.record([], 1)


async def test_sessions_of_one_device_are_serialised_and_other_devices_are_not(ledger: PushLedger) -> None:
    order: list[str] = []

    async def push(device: str, name: str, hold_s: float) -> None:
        async with ledger.session("acme", device) as session:
            head = await session.head()
            order.append(f"{name} start")
            await asyncio.sleep(hold_s)
            await session.record([accepted(head + 1)], head + 1)
            order.append(f"{name} end")

    first = asyncio.create_task(push("d-1", "a", 0.3))
    await asyncio.sleep(0.1)
    await asyncio.gather(push("d-1", "b", 0.0), push("d-2", "c", 0.0), first)
    assert order.index("a end") < order.index("b start"), "the second push of d-1 waited for the first"
    assert order.index("c end") < order.index("a end"), "d-2 did not wait for d-1"
    assert await ledger.head("d-1") == 2
