"""Per-device outboxes as one per-tenant change feed plus device-addressed messages.

Every accepted change is written once, for every device of its tenant (`device_id` NULL); conflict notices,
rejections, caution flags and resync signals are written for one device. Write cost per change is therefore
independent of the number of devices; each device keeps only a cursor. A cursor is the opaque text
`"<tx>.<pos>"`: feed rows are ordered by (writing transaction id, position) and readers never read a row
whose transaction might still be followed by an older, not yet committed one (see docs/projections.md).
Rows every device has acknowledged are pruned; a device whose cursor lies below the pruned horizon gets
`resync_required` instead of a silent gap.

`OutboxReader` is the port the gateway calls; `InMemoryOutbox` is its fake; the PostgreSQL adapter is
`projections/outbox_pg_adapter.py`. The transaction that writes outbox rows also notifies
`outbox_channel(schema)` with each tenant id (`pg_notify`, delivered at commit), so gateways wake the
tenant's long-polls and streams at once instead of waiting for their next poll.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from keel.errors import ValidationError
from keel.hlc import HlcTimestamp
from schemas.envelope import ChangeEvent, Op, Override

__all__ = [
    "Cursor",
    "FeedItem",
    "InMemoryOutbox",
    "OutboxEntry",
    "OutboxKind",
    "OutboxReader",
    "Page",
    "event_body",
    "event_from_body",
    "outbox_channel",
]

_MAX_CHANNEL = 63  # PostgreSQL identifiers (and so NOTIFY channels) are at most NAMEDATALEN - 1 bytes


def outbox_channel(schema: str) -> str:
    """The NOTIFY channel of a schema's outbox (payload: a tenant id whose feed grew), within 63 bytes."""
    channel = f"keel_outbox_{schema}"
    if len(channel.encode()) <= _MAX_CHANNEL:
        return channel
    return f"keel_outbox_{hashlib.sha256(schema.encode()).hexdigest()[:32]}"


class OutboxKind(enum.StrEnum):
    """What an outbox row tells a device."""

    CHANGE = "change"  # an accepted change, for every device of the tenant
    CONFLICT = "conflict"  # this device's write lost a conflict; body is the decision
    REJECTED = "rejected"  # this device's event was dead-lettered; body names the reason
    CAUTION = "caution"  # this device's write was migrated with losses; body lists the cautions
    RESYNC = "resync"  # state changed without a feed entry (rebuild swap): fetch a fresh snapshot


@dataclass(frozen=True, order=True, slots=True)
class Cursor:
    """A position in a tenant's feed: after every row with (tx, pos) at or below it."""

    tx: int
    pos: int

    def encode(self) -> str:
        """The opaque text form handed to devices."""
        return f"{self.tx}.{self.pos}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """Inverse of `encode`; None or "" is the start of the feed; ValidationError for anything else."""
        if not text:
            return START
        tx, _, pos = text.partition(".")
        if not (tx.isdigit() and pos.isdigit()):
            raise ValidationError(f"invalid outbox cursor {text!r} (expected '<tx>.<pos>')", field="cursor")
        return cls(int(tx), int(pos))


START = Cursor(0, 0)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A row to write: for the whole tenant (`device_id` None) or for one device."""

    tenant_id: str
    device_id: str | None
    kind: OutboxKind
    entity_type: str | None
    entity_id: str | None
    event_id: str | None
    body: Mapping[str, Any]
    trace: str | None = None  # W3C traceparent of the change's processing: deliveries link to it


@dataclass(frozen=True, slots=True)
class FeedItem:
    """A row as read back, with the cursor just after it."""

    cursor: Cursor
    entry: OutboxEntry
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class Page:
    """What one read returns: rows in order, where to continue, and whether the device must resync."""

    entries: tuple[FeedItem, ...]
    next_cursor: str
    resync_required: bool = False


class OutboxReader(Protocol):
    """What the gateway asks of the outbox."""

    async def read(self, tenant_id: str, device_id: str, cursor: str | None, limit: int = 500) -> Page:
        """Rows after `cursor` for this device (feed + its own), oldest first; resync_required past retention."""
        ...

    async def acknowledge(self, tenant_id: str, device_id: str, cursor: str) -> None:
        """The device has applied everything up to `cursor` (never moves a cursor backwards)."""
        ...

    async def current_cursor(self, tenant_id: str) -> str:
        """A cursor to continue from after reading a full snapshot of the state taken *after* this call."""
        ...

    async def prune(self, tenant_id: str, *, retention_s: float | None = None) -> int:
        """Drop rows every device acknowledged (and, with `retention_s`, rows older than it); rows dropped."""
        ...


def _hlc_json(hlc: HlcTimestamp | None) -> dict[str, Any] | None:
    return None if hlc is None else {"physical_ms": hlc.physical_ms, "logical": hlc.logical, "node": hlc.node}


def event_body(event: ChangeEvent) -> dict[str, Any]:
    """The normalized JSON of an accepted change in the current version: every envelope field, bytes as hex."""
    return {
        "event_id": event.event_id,
        "tenant_id": event.tenant_id,
        "device_id": event.device_id,
        "device_seq": event.device_seq,
        "entity_type": event.entity_type,
        "entity_id": event.entity_id,
        "op": event.op.value,
        "hlc": _hlc_json(event.hlc),
        "base_hlc": _hlc_json(event.base_hlc),
        "schema_version": event.schema_version,
        "changed_fields": list(event.changed_fields),
        "payload": event.payload,
        "override": event.override.to_avro() if event.override else None,
        "prev_hash": event.prev_hash.hex() if event.prev_hash else None,
        "hash": event.hash.hex() if event.hash else None,
        "signature": event.signature.hex() if event.signature else None,
    }


def event_from_body(body: Mapping[str, Any]) -> ChangeEvent:
    """Inverse of `event_body` (for the gateway's down-casting and for device-side merges)."""
    base = body.get("base_hlc")
    override = body.get("override")

    def raw(name: str) -> bytes | None:
        value = body.get(name)
        return bytes.fromhex(value) if value else None

    return ChangeEvent(
        event_id=str(body["event_id"]),
        tenant_id=str(body["tenant_id"]),
        device_id=str(body["device_id"]),
        device_seq=int(body["device_seq"]),
        entity_type=str(body["entity_type"]),
        entity_id=str(body["entity_id"]),
        op=Op(body["op"]),
        hlc=HlcTimestamp.from_dict(body["hlc"]),
        schema_version=int(body["schema_version"]),
        payload=body.get("payload"),
        changed_fields=tuple(body.get("changed_fields") or ()),
        base_hlc=HlcTimestamp.from_dict(base) if base else None,
        override=Override.from_avro(override) if override else None,
        prev_hash=raw("prev_hash"),
        hash=raw("hash"),
        signature=raw("signature"),
    )


@dataclass
class _StoredRow:
    cursor: Cursor
    entry: OutboxEntry
    created_at_ms: int


@dataclass
class InMemoryOutbox:
    """The outbox in lists: every `append` is one committed transaction, so no row can commit late."""

    rows: list[_StoredRow] = field(default_factory=list)
    cursors: dict[tuple[str, str], Cursor] = field(default_factory=dict)
    horizons: dict[str, Cursor] = field(default_factory=dict)
    # Called with the tenant ids of each append, after it (the fake's pg_notify on `outbox_channel`).
    on_append: list[Callable[[frozenset[str]], None]] = field(default_factory=list, repr=False, compare=False)
    _tx: int = 0
    _pos: int = 0

    def append(self, entries: Iterable[OutboxEntry]) -> None:
        """Store rows as one transaction, then tell `on_append` which tenants' feeds grew."""
        self._tx += 1
        now = time.time_ns() // 1_000_000
        tenants: set[str] = set()
        for entry in entries:
            self._pos += 1
            self.rows.append(_StoredRow(Cursor(self._tx, self._pos), entry, now))
            tenants.add(entry.tenant_id)
        if tenants:
            for notify in list(self.on_append):
                notify(frozenset(tenants))

    async def read(self, tenant_id: str, device_id: str, cursor: str | None, limit: int = 500) -> Page:
        """Rows after the cursor for this device."""
        after = Cursor.parse(cursor)
        horizon = self.horizons.get(tenant_id)
        if horizon is not None and after < horizon:
            return Page((), after.encode(), resync_required=True)
        items = [
            FeedItem(row.cursor, row.entry, row.created_at_ms)
            for row in self.rows
            if row.entry.tenant_id == tenant_id and row.entry.device_id in (None, device_id) and row.cursor > after
        ][:limit]
        next_cursor = items[-1].cursor if items else after
        return Page(tuple(items), next_cursor.encode())

    async def acknowledge(self, tenant_id: str, device_id: str, cursor: str) -> None:
        """Move the device's cursor forward."""
        parsed = Cursor.parse(cursor)
        key = (tenant_id, device_id)
        self.cursors[key] = max(parsed, self.cursors.get(key, START))

    async def current_cursor(self, tenant_id: str) -> str:
        """The newest position (every append is committed, so nothing can land below it later)."""
        return max(Cursor(self._tx, self._pos), self.horizons.get(tenant_id, START)).encode()

    async def prune(self, tenant_id: str, *, retention_s: float | None = None) -> int:
        """Drop acknowledged (or expired) rows of a tenant, like the PostgreSQL adapter."""
        acknowledged = [c for (tenant, _), c in self.cursors.items() if tenant == tenant_id]
        limit = min(acknowledged) if acknowledged else None
        if retention_s is not None:
            cutoff = time.time_ns() // 1_000_000 - int(retention_s * 1000)
            expired = [r.cursor for r in self.rows if r.entry.tenant_id == tenant_id and r.created_at_ms <= cutoff]
            if expired:
                limit = max(expired) if limit is None else max(limit, *expired)
        if limit is None:
            return 0
        doomed = {id(r) for r in self.rows if r.entry.tenant_id == tenant_id and r.cursor <= limit}
        self.horizons[tenant_id] = max(self.horizons.get(tenant_id, START), limit)
        self.rows = [row for row in self.rows if id(row) not in doomed]
        return len(doomed)
