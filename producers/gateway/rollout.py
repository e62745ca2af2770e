"""Rollout flags: which tenants (or share of devices) get an entity's newest version, changed at run time.

`schemas/subjects.toml` sets each entity's rollout cohort at build time. A flag stored here replaces that
cohort for every gateway instance from their next handshake on, without a restart — the feature flag of
docs/schema-governance.md ("put a tenant or 1% in the cohort, watch, widen"). Devices already holding a
token keep their versions until they handshake again (token renewal, a 401, or a reconnect).

The PostgreSQL adapter is `producers/gateway/rollout_pg_adapter.py` (`{schema}.rollout_flags`);
`InMemoryRolloutFlags` is the fake; both pass tests/producers/gateway/test_rollout_contract.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from keel.errors import ServiceUnavailableError, ValidationError
from schemas.catalog import Catalog, EntityPolicy
from schemas.negotiation import with_rollout

__all__ = ["InMemoryRolloutFlags", "RolloutFlag", "RolloutFlags", "policies_with_flags"]


@dataclass(frozen=True, slots=True)
class RolloutFlag:
    """The rollout cohort of one entity: these tenants, plus `percent` of devices (stable hash of the id)."""

    entity: str
    tenants: tuple[str, ...] = ()
    percent: float = 0.0

    def __post_init__(self) -> None:
        if not self.entity:
            raise ValidationError("a rollout flag names an entity type", field="entity")
        if not math.isfinite(self.percent) or not 0.0 <= self.percent <= 100.0:
            raise ValidationError(f"rollout percent must be within 0..100, got {self.percent}", field="percent")
        if any(not tenant for tenant in self.tenants):
            raise ValidationError("rollout tenants must be non-empty ids", field="tenants")


class RolloutFlags(Protocol):
    """Where the live rollout cohorts are kept."""

    async def flags(self) -> dict[str, RolloutFlag]:
        """Entity type → its flag (entities without one follow subjects.toml)."""
        ...

    async def set_flag(self, flag: RolloutFlag) -> None:
        """Create or replace the flag of `flag.entity`."""
        ...

    async def clear_flag(self, entity: str) -> None:
        """Drop an entity's flag: it follows subjects.toml again."""
        ...


class InMemoryRolloutFlags:
    """`RolloutFlags` in a dict; `available=False` simulates an outage."""

    def __init__(self) -> None:
        self._flags: dict[str, RolloutFlag] = {}
        self.available = True

    def _raise_if_down(self) -> None:
        if not self.available:
            raise ServiceUnavailableError("postgresql", "in-memory rollout flags switched off")

    async def flags(self) -> dict[str, RolloutFlag]:
        """Every flag."""
        self._raise_if_down()
        return dict(self._flags)

    async def set_flag(self, flag: RolloutFlag) -> None:
        """Create or replace a flag."""
        self._raise_if_down()
        self._flags[flag.entity] = flag

    async def clear_flag(self, entity: str) -> None:
        """Drop a flag."""
        self._raise_if_down()
        self._flags.pop(entity, None)


def policies_with_flags(
    catalog: Catalog, flags: Mapping[str, RolloutFlag], base: Mapping[str, EntityPolicy] | None = None
) -> dict[str, EntityPolicy]:
    """Each entity's policy (from `base`, else the catalog) with its flag's cohort; unknown entity types are skipped."""
    policies = dict(base or {})
    for entity, flag in flags.items():
        if entity not in catalog.schemas:
            continue  # a flag left behind by a newer build: this one cannot offer that entity anyway
        policy = policies.get(entity) or catalog.policy(entity)
        policies[entity] = with_rollout(policy, tenants=flag.tenants, percent=flag.percent)
    return policies
