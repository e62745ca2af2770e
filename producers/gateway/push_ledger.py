"""The push ledger port: each device's durable head seq and the outcome of every seq it consumed.

A device's pushes are serialised across gateway instances: `session` holds an exclusive per-device lock
(PostgreSQL: `pg_advisory_xact_lock`) for the whole push, and `record` commits the new head with the
outcomes when the session ends. A seq is *consumed* once it is accepted (the broker acknowledged it),
rejected for good, or abandoned by the device; the head is the highest seq below which every seq is
consumed. The PostgreSQL adapter is `producers/gateway/push_ledger_pg_adapter.py`; `InMemoryPushLedger` is
the fake; both pass tests/producers/gateway/test_push_ledger_contract.py.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from keel.errors import SequenceError, ServiceUnavailableError

__all__ = ["InMemoryPushLedger", "LedgerSession", "Outcome", "PushLedger", "SeqOutcome"]


class Outcome(enum.Enum):
    """How a seq was consumed."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class SeqOutcome:
    """The fate of one seq of one device."""

    seq: int
    event_id: str
    outcome: Outcome
    code: str | None = None
    reason: str | None = None
    field: str | None = None
    # The seq's chain link (signed devices only; docs/security.md): what the next op must follow.
    hash: bytes | None = None
    prev_hash: bytes | None = None
    signature: bytes | None = None


class LedgerSession(Protocol):
    """One device's ledger while its lock is held."""

    async def head(self) -> int:
        """The device's head seq (0 before its first push)."""
        ...

    async def outcomes(self, seqs: Sequence[int]) -> dict[int, SeqOutcome]:
        """Recorded outcomes of some consumed seqs."""
        ...

    async def record(self, outcomes: Sequence[SeqOutcome], head: int) -> None:
        """Store outcomes and the new head; committed when the session ends without error."""
        ...


class PushLedger(Protocol):
    """Per-device heads and seq outcomes."""

    def session(self, tenant_id: str, device_id: str) -> AbstractAsyncContextManager[LedgerSession]:
        """Lock the device, yield its ledger, commit on a clean exit and roll back on an error."""
        ...

    async def head(self, device_id: str) -> int:
        """The committed head of a device, without locking."""
        ...

    async def head_hash(self, device_id: str) -> bytes | None:
        """The chain hash of the op at the committed head (None: no head, or not signed), without locking."""
        ...


@dataclass
class _DeviceLedger:
    head: int = 0
    outcomes: dict[int, SeqOutcome] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _MemorySession:
    def __init__(self, ledger: _DeviceLedger) -> None:
        self._ledger = ledger
        self.pending: tuple[list[SeqOutcome], int] | None = None

    async def head(self) -> int:
        return self._ledger.head

    async def outcomes(self, seqs: Sequence[int]) -> dict[int, SeqOutcome]:
        return {seq: self._ledger.outcomes[seq] for seq in seqs if seq in self._ledger.outcomes}

    async def record(self, outcomes: Sequence[SeqOutcome], head: int) -> None:
        if head < self._ledger.head:
            raise SequenceError(f"the head may not move back from {self._ledger.head} to {head}")
        self.pending = (list(outcomes), head)


class InMemoryPushLedger:
    """`PushLedger` in dicts, with one asyncio lock per device; `available=False` simulates an outage."""

    def __init__(self) -> None:
        self._devices: dict[str, _DeviceLedger] = {}
        self.available = True

    def _raise_if_down(self) -> None:
        if not self.available:
            raise ServiceUnavailableError("postgresql", "in-memory push ledger switched off")

    @asynccontextmanager
    async def _session(self, device_id: str) -> AsyncIterator[LedgerSession]:
        self._raise_if_down()
        ledger = self._devices.setdefault(device_id, _DeviceLedger())
        async with ledger.lock:
            session = _MemorySession(ledger)
            yield session
            self._raise_if_down()
            if session.pending is not None:
                outcomes, head = session.pending
                ledger.outcomes.update((o.seq, o) for o in outcomes)
                ledger.head = max(ledger.head, head)

    def session(self, tenant_id: str, device_id: str) -> AbstractAsyncContextManager[LedgerSession]:
        """Lock the device's ledger."""
        del tenant_id  # device ids are global; the PostgreSQL adapter stores the tenant beside them
        return self._session(device_id)

    async def head(self, device_id: str) -> int:
        """Committed head."""
        self._raise_if_down()
        ledger = self._devices.get(device_id)
        return ledger.head if ledger is not None else 0

    async def head_hash(self, device_id: str) -> bytes | None:
        """Chain hash at the committed head."""
        self._raise_if_down()
        ledger = self._devices.get(device_id)
        found = ledger.outcomes.get(ledger.head) if ledger is not None else None
        return found.hash if found is not None else None
