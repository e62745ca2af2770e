"""A clean single-process replay of a decoded log, and digests of visible rows in any schema version.

The replay uses the projector's own pure steps — `split_by_dedup` (first record of a dedup key wins, later
copies with the same event id are redeliveries, another event id is a replayed seq the projector
dead-letters) and `merge_batch` — over every event at once. The merge is commutative, associative and
idempotent (tests/projections/test_permutation.py), so one batch in log order gives the state any correct
projector must reach, whatever its batching, crashes and redeliveries were.

`digests_in_versions` turns visible rows (payload values in the current version) into digests per
(tenant, entity type, version), moving values down with the migration registry exactly as the gateway does
for `/v1/digest` (`producers/gateway/state_sync.py`), so a device on version N compares like for like.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from deploy.verification.checker import DigestKey
from projections.batch import EntityKey, SourcedEvent, merge_batch, split_by_dedup
from projections.conflict_rules import ConflictRules, Decision, EntityState
from projections.digest import digest_rows
from projections.entity_tables import entity_tables
from projections.store import VisibleRow
from schemas.catalog import Catalog, default_catalog
from schemas.migrations import MigrationRegistry

__all__ = ["Replay", "digests_in_versions", "replay", "values_in_version"]


@dataclass(frozen=True)
class Replay:
    """The state a clean projector reaches from a log."""

    states: dict[EntityKey, EntityState]
    decisions: list[Decision]
    applied: int
    redeliveries: int
    replayed: tuple[SourcedEvent, ...]  # same dedup key, another event id: dead-lettered by the projector

    def visible_rows(self, entity_type: str) -> list[VisibleRow]:
        """Live entities of a type as (tenant, entity id, values in the current version), like a store's."""
        defaults = entity_tables()[entity_type].defaults()
        rows = []
        for (kind, tenant, entity_id), state in self.states.items():
            if kind != entity_type:
                continue
            visible = state.visible(defaults)
            if visible is not None:
                rows.append((tenant, entity_id, visible))
        return sorted(rows, key=lambda row: (row[0], row[1]))


def replay(events: Iterable[SourcedEvent], rules: ConflictRules | None = None) -> Replay:
    """Fold decoded events (in log order, copies included) into states with the projector's merge."""
    split = split_by_dedup(events, {})
    merged = merge_batch({}, split.fresh, rules)
    return Replay(
        states=merged.states,
        decisions=merged.decisions,
        applied=len(split.fresh),
        redeliveries=len(split.duplicates),
        replayed=split.replayed,
    )


def values_in_version(
    entity_type: str,
    values: Mapping[str, Any],
    version: int,
    migrations: MigrationRegistry,
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """A row's current-version values moved to `version` (what a device on that version stores)."""
    current = (catalog or default_catalog()).current_version(entity_type)
    if version == current:
        return dict(values)
    moved = migrations.migrate(entity_type, dict(values), tuple(values), current, version)
    return dict(moved.payload or {})


def digests_in_versions(
    rows_by_type: Mapping[str, Iterable[VisibleRow]],
    versions: Mapping[str, Iterable[int]],
    migrations: MigrationRegistry,
    catalog: Catalog | None = None,
) -> dict[DigestKey, str]:
    """(tenant, entity type, version) → digest of the tenant's live rows in that version (tenants with rows)."""
    digests: dict[DigestKey, str] = {}
    for entity_type, rows in rows_by_type.items():
        by_tenant: dict[str, list[tuple[str, Mapping[str, Any]]]] = defaultdict(list)
        for tenant, entity_id, values in rows:
            by_tenant[tenant].append((entity_id, values))
        for version in sorted(set(versions.get(entity_type, ()))):
            for tenant, items in by_tenant.items():
                moved = [
                    (eid, values_in_version(entity_type, vals, version, migrations, catalog)) for eid, vals in items
                ]
                digests[(tenant, entity_type, version)] = digest_rows(moved)
    return digests
