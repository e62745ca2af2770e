"""The state relay's view of the projections: the outbox feed of every tenant in commit order, and states.

The relay (consumers/state_relay.py) publishes the merged state of every entity that changed. It reads the
tenant-wide feed rows (`device_id` NULL) of all tenants by `(tx, pos)` with the same rule as device feeds —
only rows of transactions older than the oldest one still running (docs/projections.md) — so a cursor never
passes a row that commits late. Its cursor lives in PostgreSQL (`relay_cursors`), stored after Kafka
acknowledged the page. When rows after the cursor were pruned (a tenant's `outbox_horizons` lies above it),
`read` says so and the relay republishes every state instead (`states_after`), then continues from
`resume_point`.

`StateFeed` is the port; `InMemoryStateFeed` its fake over an `InMemoryProjectionStore`; the PostgreSQL
adapter is `projections/state_feed_pg_adapter.py`. Both pass tests/consumers/test_state_feed_contract.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from projections.conflict_rules import EntityState
from projections.outbox import START, Cursor, OutboxKind
from projections.store import InMemoryProjectionStore

__all__ = ["FeedChange", "FeedPage", "InMemoryStateFeed", "StateFeed"]

EntityKey = tuple[str, str]  # (tenant_id, entity_id): entity ids are unique only within a tenant


@dataclass(frozen=True, slots=True)
class FeedChange:
    """One tenant-wide feed row: an entity changed (CHANGE) or a tenant's states were swapped (RESYNC)."""

    cursor: Cursor
    tenant_id: str
    kind: OutboxKind
    entity_type: str | None
    entity_id: str | None
    trace: str | None = None  # W3C traceparent of the change's processing by the projector
    entity_types: tuple[str, ...] = ()  # RESYNC: the entity types a rebuild swapped


@dataclass(frozen=True, slots=True)
class FeedPage:
    """Feed rows after a cursor in commit order, where to continue, and whether rows were pruned meanwhile."""

    changes: tuple[FeedChange, ...]
    next_cursor: Cursor
    pruned: bool = False  # rows after the cursor are gone: republish every state (a snapshot)


class StateFeed(Protocol):
    """What the state relay reads and stores."""

    async def read(self, after: Cursor, limit: int = 500) -> FeedPage:
        """Tenant-wide feed rows of every tenant after `after`, oldest commit first; `pruned` past a horizon."""
        ...

    async def resume_point(self) -> Cursor:
        """A cursor to continue from after a snapshot of the states read *after* this call (never below a horizon)."""
        ...

    async def states_after(
        self, entity_type: str, after: EntityKey | None, limit: int = 500, *, tenant_id: str | None = None
    ) -> list[EntityState]:
        """Merged states of one type ordered by (tenant, entity id), after `after` (optionally one tenant's)."""
        ...

    async def load_cursor(self, relay: str) -> Cursor | None:
        """The stored cursor of a relay (None: never stored)."""
        ...

    async def store_cursor(self, relay: str, cursor: Cursor) -> None:
        """Store a relay's cursor (never moves it backwards)."""
        ...


@dataclass
class InMemoryStateFeed:
    """`StateFeed` over the fake store's outbox and states: every append is committed, nothing commits late."""

    store: InMemoryProjectionStore
    cursors: dict[str, Cursor] = field(default_factory=dict)

    async def read(self, after: Cursor, limit: int = 500) -> FeedPage:
        """Tenant-wide rows after the cursor, or `pruned` when a tenant's horizon lies above it."""
        await asyncio.sleep(0)
        outbox = self.store.outbox
        if any(horizon > after for horizon in outbox.horizons.values()):
            return FeedPage((), after, pruned=True)
        changes = tuple(
            FeedChange(
                row.cursor,
                row.entry.tenant_id,
                row.entry.kind,
                row.entry.entity_type,
                row.entry.entity_id,
                row.entry.trace,
                tuple(row.entry.body.get("entity_types", ())) if row.entry.kind is OutboxKind.RESYNC else (),
            )
            for row in sorted(outbox.rows, key=lambda r: r.cursor)
            if row.entry.device_id is None and row.cursor > after
        )[:limit]
        return FeedPage(changes, changes[-1].cursor if changes else after)

    async def resume_point(self) -> Cursor:
        """After every row written so far and every horizon."""
        outbox = self.store.outbox
        return max([START, *(row.cursor for row in outbox.rows), *outbox.horizons.values()])

    async def states_after(
        self, entity_type: str, after: EntityKey | None, limit: int = 500, *, tenant_id: str | None = None
    ) -> list[EntityState]:
        """States in key order."""
        await asyncio.sleep(0)
        keys = sorted(
            (tenant, entity_id)
            for kind, tenant, entity_id in self.store.states
            if kind == entity_type
            and (tenant_id is None or tenant == tenant_id)
            and (after is None or (tenant, entity_id) > after)
        )[:limit]
        return [self.store.states[(entity_type, tenant, entity_id)] for tenant, entity_id in keys]

    async def load_cursor(self, relay: str) -> Cursor | None:
        """The stored cursor."""
        return self.cursors.get(relay)

    async def store_cursor(self, relay: str, cursor: Cursor) -> None:
        """Move the cursor forward only."""
        self.cursors[relay] = max(cursor, self.cursors.get(relay, START))
