"""The outbox watcher: a signal wakes a tenant's waiters at once, polling is the fallback, nothing is missed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import pytest

from producers.gateway.outbox_signals import InMemoryOutboxSignals
from producers.gateway.pull import OutboxWatcher
from projections.outbox import InMemoryOutbox, OutboxEntry, OutboxKind, Page

SLOW = 30.0  # a poll interval no test waits for: only a signal (or a reconnection) can explain a wake-up


def change(tenant_id: str, n: int) -> OutboxEntry:
    return OutboxEntry(tenant_id, None, OutboxKind.CHANGE, "task", f"t-{n}", f"e-{n}", {"n": n})


class LateOutbox(InMemoryOutbox):
    """An outbox whose rows stay invisible to `hidden_reads` reads after each append (an older transaction
    still running keeps a committed row below readers' horizon)."""

    hidden_reads: int = 0
    _hide: int = 0

    def append(self, entries: Iterable[OutboxEntry]) -> None:
        self._hide = self.hidden_reads
        super().append(entries)

    async def read(self, tenant_id: str, device_id: str, cursor: str | None, limit: int = 500) -> Page:
        if self._hide:
            self._hide -= 1
            return Page((), cursor or "")
        return await super().read(tenant_id, device_id, cursor, limit)


@dataclass
class Rig:
    outbox: InMemoryOutbox
    signals: InMemoryOutboxSignals
    watcher: OutboxWatcher


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    outbox = LateOutbox()
    signals = InMemoryOutboxSignals(outbox)
    watcher = OutboxWatcher(outbox, interval_s=SLOW, signals=signals, fallback_interval_s=SLOW, retry_s=0.01)
    await watcher.start()
    try:
        yield Rig(outbox, signals, watcher)
    finally:
        await watcher.stop()


async def _known_position(rig: Rig, tenant_id: str) -> None:
    """Let the watcher learn the tenant's position (a reconnection polls every watched tenant at once)."""
    rig.signals.available = False
    rig.signals.available = True
    await asyncio.sleep(0.05)


async def _woken(event: asyncio.Event, timeout_s: float = 2.0) -> float:
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        await event.wait()
    return time.monotonic() - started


async def test_a_signal_wakes_the_tenants_waiters_at_once_and_no_other_tenants(rig: Rig) -> None:
    async with rig.watcher.listen("acme") as acme, rig.watcher.listen("globex") as globex:
        await _known_position(rig, "acme")
        assert rig.watcher.is_signalled
        rig.outbox.append([change("acme", 1)])
        assert await _woken(acme) < 0.5, "woken by the signal, not the 30 s poll"
        assert not globex.is_set()
        assert rig.watcher.signals_received == 1


async def test_rows_not_visible_yet_are_read_again_until_they_are(rig: Rig) -> None:
    assert isinstance(rig.outbox, LateOutbox)
    async with rig.watcher.listen("acme") as acme:
        await _known_position(rig, "acme")
        rig.outbox.hidden_reads = 3
        rig.outbox.append([change("acme", 1)])
        await _woken(acme)
        assert rig.outbox._hide == 0, "read until the rows showed"


async def test_a_signal_before_the_position_is_known_still_wakes(rig: Rig) -> None:
    async with rig.watcher.listen("acme") as acme:
        rig.outbox.append([change("acme", 1)])  # the watcher never polled acme yet
        await _woken(acme)


async def test_without_signals_it_polls_and_a_reconnection_reads_what_was_missed(rig: Rig) -> None:
    async with rig.watcher.listen("acme") as acme:
        await _known_position(rig, "acme")
        rig.signals.available = False
        assert not rig.watcher.is_signalled
        rig.outbox.append([change("acme", 1)])  # unsignalled: the connection is down
        await asyncio.sleep(0.1)
        assert not acme.is_set(), "nothing but the (slow) poll could have noticed"
        rig.signals.available = True
        await _woken(acme)


async def test_polling_alone_wakes_waiters_when_there_is_no_signal_source() -> None:
    outbox = InMemoryOutbox()
    watcher = OutboxWatcher(outbox, interval_s=0.02)
    await watcher.start()
    try:
        async with watcher.listen("acme") as acme:
            await asyncio.sleep(0.1)  # a poll learns the position
            outbox.append([change("acme", 1)])
            await _woken(acme)
            assert not watcher.is_signalled
    finally:
        await watcher.stop()


async def test_stopping_unsubscribes_and_wakes_everyone(rig: Rig) -> None:
    async with rig.watcher.listen("acme") as acme:
        await rig.watcher.stop()
        assert acme.is_set()
        assert not rig.signals.is_listening
        assert rig.outbox.on_append == []
