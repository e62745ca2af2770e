"""Signals that a tenant's outbox grew: the projector's notifications, so gateways need not poll to notice.

The projector's batch transaction notifies `projections.outbox.outbox_channel(schema)` with each tenant whose
feed it wrote (PostgreSQL delivers a notification at commit, and none for a rolled-back transaction).
`OutboxWatcher` (producers/gateway/pull.py) reads a notified tenant's feed at once and wakes its long-polls
and live streams; while no signal source is connected it falls back to polling at its usual rate. A signal
is a hint, never the data: the watcher always reads the feed, so a lost or duplicated signal costs latency,
not correctness.

The PostgreSQL adapter is `producers/gateway/outbox_signals_pg_adapter.py` (LISTEN on a dedicated connection,
reconnecting); `InMemoryOutboxSignals` is the fake, fed by `InMemoryOutbox.append`. Both pass
tests/producers/gateway/test_outbox_signals_contract.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from projections.outbox import InMemoryOutbox

__all__ = ["InMemoryOutboxSignals", "OutboxSignals"]


class OutboxSignals(Protocol):
    """Where notifications of grown outboxes come from."""

    @property
    def is_listening(self) -> bool:
        """Whether signals arrive now (while not, the watcher polls at its usual rate)."""
        ...

    async def start(self, on_grown: Callable[[str], None], on_connected: Callable[[], None]) -> None:
        """Deliver each grown tenant's id to `on_grown`; call `on_connected` after every (re)connection."""
        ...

    async def stop(self) -> None:
        """Stop listening and release the connection (idempotent)."""
        ...


class InMemoryOutboxSignals:
    """`OutboxSignals` from an `InMemoryOutbox`'s appends; `available=False` simulates a lost connection."""

    def __init__(self, outbox: InMemoryOutbox) -> None:
        self._outbox = outbox
        self._on_grown: Callable[[str], None] | None = None
        self._on_connected: Callable[[], None] | None = None
        self._available = True

    @property
    def is_listening(self) -> bool:
        """Started and connected."""
        return self._on_grown is not None and self._available

    @property
    def available(self) -> bool:
        """Whether the simulated connection is up."""
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        was, self._available = self._available, value
        if value and not was and self._on_connected is not None:
            self._on_connected()  # reconnected: what was appended meanwhile went unsignalled

    def _appended(self, tenants: frozenset[str]) -> None:
        if self.is_listening and self._on_grown is not None:
            for tenant_id in sorted(tenants):
                self._on_grown(tenant_id)

    async def start(self, on_grown: Callable[[str], None], on_connected: Callable[[], None]) -> None:
        """Subscribe to the outbox's appends."""
        if self._on_grown is None:
            self._on_grown, self._on_connected = on_grown, on_connected
            self._outbox.on_append.append(self._appended)
            if self._available:
                on_connected()

    async def stop(self) -> None:
        """Unsubscribe."""
        if self._on_grown is not None:
            self._outbox.on_append.remove(self._appended)
            self._on_grown = self._on_connected = None
