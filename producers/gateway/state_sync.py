"""Digests and snapshots of the server's state in a device's versions, for divergence checks and repairs.

A device on version N compares `projections.digest` of its live rows with the digest of the server's rows
down-cast to N. When they differ it asks for per-row hashes, then for the snapshots of the rows that
differ: each field of the merged state moved to version N *with its write stamp*, so the device keeps
merging later changes exactly as the server does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from keel.errors import ValidationError
from producers.gateway.tokens import DeviceClaims
from producers.wire import DigestResponse, EntityDigest, EntitySnapshot, EntitySnapshotsResponse, FieldSnapshot
from projections.conflict_rules import EntityState, WriteStamp
from projections.digest import canonical_row, digest_rows
from projections.store import VisibleRow
from schemas.catalog import Catalog, default_catalog
from schemas.migrations import MigrationRegistry

__all__ = ["MAX_SNAPSHOT_IDS", "StateService", "StateSource"]

MAX_SNAPSHOT_IDS = 500


class StateSource(Protocol):
    """The read side of the projection store this service needs (any `ProjectionStore` is one)."""

    async def entity_states(
        self, entity_type: str, tenant_id: str, entity_ids: Sequence[str]
    ) -> dict[str, EntityState]:
        """The merged states of some entities of one tenant (ids without one are left out)."""
        ...

    async def visible_rows(self, entity_type: str, tenant_id: str | None = None) -> list[VisibleRow]:
        """Live entities of a type as payload values in the current version."""
        ...


class StateService:
    """Answers /v1/digest and /v1/entities."""

    def __init__(self, states: StateSource, migrations: MigrationRegistry, catalog: Catalog | None = None) -> None:
        self._states = states
        self._migrations = migrations
        self._catalog = catalog or default_catalog()

    def _values_in(self, entity_type: str, values: Mapping[str, Any], version: int) -> dict[str, Any]:
        current = self._catalog.current_version(entity_type)
        if version == current:
            return dict(values)
        moved = self._migrations.migrate(entity_type, dict(values), tuple(values), current, version)
        return dict(moved.payload or {})

    async def digest(self, claims: DeviceClaims, detail: Iterable[str] = ()) -> DigestResponse:
        """Digests of every entity type the device handles, in its versions (row hashes for `detail`)."""
        wanted = set(detail)
        digests: dict[str, EntityDigest] = {}
        for entity_type, version in sorted(claims.versions.items()):
            if entity_type not in self._catalog.schemas:
                continue
            rows = await self._states.visible_rows(entity_type, claims.tenant_id)
            moved = [(entity_id, self._values_in(entity_type, values, version)) for _, entity_id, values in rows]
            hashes = None
            if entity_type in wanted:
                hashes = {eid: hashlib.sha256(canonical_row(eid, values)).hexdigest() for eid, values in moved}
            digests[entity_type] = EntityDigest(
                version=version, digest=digest_rows(moved), count=len(moved), row_hashes=hashes
            )
        return DigestResponse(entities=digests)

    def snapshot_in(self, state: EntityState, version: int) -> EntitySnapshot:
        """One merged state with every field moved to `version`, keeping the stamps."""
        current = self._catalog.current_version(state.entity_type)
        fields: dict[str, tuple[Any, WriteStamp]] = {}
        for name, field_state in state.fields.items():
            if version == current:
                moved = {name: field_state.value}
            else:
                result = self._migrations.migrate(
                    state.entity_type, {name: field_state.value}, (name,), current, version
                )
                payload = result.payload or {}
                moved = {target: payload.get(target) for target in result.changed_fields}
            for target, value in moved.items():
                kept = fields.get(target)
                if kept is None or field_state.stamp > kept[1]:
                    fields[target] = (value, field_state.stamp)
        return EntitySnapshot(
            entity_type=state.entity_type,
            entity_id=state.entity_id,
            version=version,
            fields={name: FieldSnapshot(value=value, stamp=stamp.as_list()) for name, (value, stamp) in fields.items()},
            deleted=state.deleted.as_list() if state.deleted is not None else None,
        )

    async def snapshots(self, claims: DeviceClaims, entity_type: str, ids: Iterable[str]) -> EntitySnapshotsResponse:
        """Snapshots of some entities of the device's tenant in its version."""
        version = claims.version_of(entity_type)
        if version is None or entity_type not in self._catalog.schemas:
            raise ValidationError(f"this device does not handle entity type {entity_type!r}", field="type")
        wanted = list(dict.fromkeys(i for i in ids if i))
        if len(wanted) > MAX_SNAPSHOT_IDS:
            raise ValidationError(f"at most {MAX_SNAPSHOT_IDS} ids per request, got {len(wanted)}", field="ids")
        states = await self._states.entity_states(entity_type, claims.tenant_id, wanted) if wanted else {}
        snapshots = [self.snapshot_in(states[entity_id], version) for entity_id in wanted if entity_id in states]
        missing = [entity_id for entity_id in wanted if entity_id not in states]
        return EntitySnapshotsResponse(snapshots=snapshots, missing=missing)
