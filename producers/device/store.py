"""The device store port: entity states, the op-log and small metadata, changed only in transactions.

A write and its op, a seq and its counter, a pulled page and its cursor are committed in one
`StoreTransaction`, so a crash (kill -9, power loss) leaves either all of them or none. The real adapter is
`producers/device/sqlite_store_adapter.py`; `InMemoryDeviceStore` is the fake; both pass
tests/producers/device/test_store_contract.py. The security work swaps in an encrypted adapter behind the
same Protocol.
"""

from __future__ import annotations

import copy
import enum
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from keel.errors import ConfigurationError, SequenceError
from projections.conflict_rules import EntityState
from schemas.envelope import ChangeEvent

__all__ = [
    "ENTITY_TYPE_PATTERN",
    "DeviceStore",
    "InMemoryDeviceStore",
    "LoggedOp",
    "OpStatus",
    "StoreTransaction",
    "StoredEntity",
    "raise_if_bad_entity_type",
]

ENTITY_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def raise_if_bad_entity_type(entity_type: str) -> None:
    """ConfigurationError unless `entity_type` is a catalog-style name (it becomes a table name)."""
    if not ENTITY_TYPE_PATTERN.match(entity_type):
        raise ConfigurationError(f"entity type {entity_type!r} must match {ENTITY_TYPE_PATTERN.pattern}")


class OpStatus(enum.Enum):
    """Where an op is in its life: waiting for the gateway, acknowledged, or refused for good."""

    PENDING = "pending"
    SENT = "sent"
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class LoggedOp:
    """An op in the op-log with its status and, when quarantined, the gateway's reason."""

    event: ChangeEvent
    status: OpStatus
    size_bytes: int
    created_at_ms: int
    reason: str | None = None
    code: str | None = None
    trace: str | None = None  # W3C traceparent of the capture span: the op's trace continues from it

    @property
    def seq(self) -> int:
        """The op's device_seq."""
        return self.event.device_seq


@dataclass(frozen=True, slots=True)
class StoredEntity:
    """An entity's merged state and its visible values in the local version (None when deleted)."""

    state: EntityState
    visible: Mapping[str, Any] | None

    @property
    def entity_type(self) -> str:
        """The entity's type."""
        return self.state.entity_type

    @property
    def entity_id(self) -> str:
        """The entity's id."""
        return self.state.entity_id


class StoreTransaction(Protocol):
    """Reads and writes inside one atomic, durable transaction."""

    def get_meta(self, key: str) -> str | None:
        """A metadata value (identity, counters, clock, cursor), or None."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value."""
        ...

    def load_entity(self, entity_type: str, entity_id: str) -> StoredEntity | None:
        """One entity, or None if never seen."""
        ...

    def save_entity(self, entity: StoredEntity) -> None:
        """Insert or replace an entity."""
        ...

    def entities(self, entity_type: str) -> list[StoredEntity]:
        """Every entity of a type (live and deleted), in entity-id order."""
        ...

    def append_op(self, event: ChangeEvent, size_bytes: int, created_at_ms: int, trace: str | None = None) -> None:
        """Add a pending op (with the traceparent of its capture); SequenceError unless its seq is the highest yet."""
        ...

    def ops(self, status: OpStatus, *, after_seq: int = 0, limit: int | None = None) -> list[LoggedOp]:
        """Ops in a status with seq > after_seq, in seq order."""
        ...

    def ops_for_entity(self, entity_type: str, entity_id: str) -> list[LoggedOp]:
        """Every logged op of one entity, in seq order."""
        ...

    def set_status(
        self, seqs: Sequence[int], status: OpStatus, *, reason: str | None = None, code: str | None = None
    ) -> None:
        """Move ops to a status (a reason and code for quarantine)."""
        ...

    def count_ops(self, status: OpStatus) -> int:
        """How many ops are in a status."""
        ...

    def last_logged_seq(self) -> int:
        """The highest seq ever logged (0 for none)."""
        ...


class DeviceStore(Protocol):
    """A device's durable local storage."""

    def transaction(self) -> AbstractContextManager[StoreTransaction]:
        """An atomic unit of work: committed when the block ends, rolled back if it raises."""
        ...

    def close(self) -> None:
        """Release the storage (idempotent)."""
        ...


# ---------------------------------------------------------------- the in-memory fake


@dataclass
class _Data:
    meta: dict[str, str] = field(default_factory=dict)
    entities: dict[tuple[str, str], StoredEntity] = field(default_factory=dict)
    ops: dict[int, LoggedOp] = field(default_factory=dict)
    last_seq: int = 0


class _MemoryTransaction:
    """Works on a copy; the store swaps it in on commit."""

    def __init__(self, data: _Data) -> None:
        self.data = data

    def get_meta(self, key: str) -> str | None:
        """A metadata value."""
        return self.data.meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value."""
        self.data.meta[key] = value

    def load_entity(self, entity_type: str, entity_id: str) -> StoredEntity | None:
        """One entity."""
        raise_if_bad_entity_type(entity_type)
        return self.data.entities.get((entity_type, entity_id))

    def save_entity(self, entity: StoredEntity) -> None:
        """Insert or replace."""
        raise_if_bad_entity_type(entity.entity_type)
        visible = copy.deepcopy(dict(entity.visible)) if entity.visible is not None else None
        self.data.entities[(entity.entity_type, entity.entity_id)] = StoredEntity(entity.state, visible)

    def entities(self, entity_type: str) -> list[StoredEntity]:
        """Every entity of a type."""
        raise_if_bad_entity_type(entity_type)
        return [e for (kind, _), e in sorted(self.data.entities.items()) if kind == entity_type]

    def append_op(self, event: ChangeEvent, size_bytes: int, created_at_ms: int, trace: str | None = None) -> None:
        """Add a pending op."""
        if event.device_seq <= self.data.last_seq:
            raise SequenceError(f"seq {event.device_seq} is not above the last logged seq {self.data.last_seq}")
        self.data.ops[event.device_seq] = LoggedOp(event, OpStatus.PENDING, size_bytes, created_at_ms, trace=trace)
        self.data.last_seq = event.device_seq

    def ops(self, status: OpStatus, *, after_seq: int = 0, limit: int | None = None) -> list[LoggedOp]:
        """Ops in a status, seq order."""
        found = [op for seq, op in sorted(self.data.ops.items()) if seq > after_seq and op.status is status]
        return found if limit is None else found[:limit]

    def ops_for_entity(self, entity_type: str, entity_id: str) -> list[LoggedOp]:
        """Every op of one entity."""
        return [
            op
            for _, op in sorted(self.data.ops.items())
            if (op.event.entity_type, op.event.entity_id) == (entity_type, entity_id)
        ]

    def set_status(
        self, seqs: Sequence[int], status: OpStatus, *, reason: str | None = None, code: str | None = None
    ) -> None:
        """Move ops to a status."""
        for seq in seqs:
            if seq in self.data.ops:
                self.data.ops[seq] = replace(self.data.ops[seq], status=status, reason=reason, code=code)

    def count_ops(self, status: OpStatus) -> int:
        """How many ops in a status."""
        return sum(1 for op in self.data.ops.values() if op.status is status)

    def last_logged_seq(self) -> int:
        """Highest seq ever logged."""
        return self.data.last_seq


class InMemoryDeviceStore:
    """`DeviceStore` in memory; pass the same `backing` to a new instance to simulate a restart."""

    def __init__(self, backing: _Data | None = None) -> None:
        self.backing = backing if backing is not None else _Data()
        self._lock = threading.RLock()
        self._in_transaction = False
        self.closed = False

    @contextmanager
    def _transaction(self) -> Iterator[StoreTransaction]:
        with self._lock:
            if self.closed:
                raise ConfigurationError("the device store is closed")
            if self._in_transaction:
                raise ConfigurationError("device store transactions do not nest")
            self._in_transaction = True
            try:
                working = _Data(
                    dict(self.backing.meta), dict(self.backing.entities), dict(self.backing.ops), self.backing.last_seq
                )
                yield _MemoryTransaction(working)
                # Commit: swap the contents in one step (the backing object itself survives "restarts").
                self.backing.meta, self.backing.entities = working.meta, working.entities
                self.backing.ops, self.backing.last_seq = working.ops, working.last_seq
            finally:
                self._in_transaction = False

    def transaction(self) -> AbstractContextManager[StoreTransaction]:
        """An atomic unit of work on a copy of the data."""
        return self._transaction()

    def close(self) -> None:
        """Mark closed (the backing data stays for a reopen)."""
        self.closed = True
