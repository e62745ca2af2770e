"""Schema version negotiation at handshake: which version of each entity a device and the server speak.

The server offers, per entity, versions from `minimum_version` up to a ceiling: `newest_version` for the
rollout cohort (listed tenants, or a stable share of devices), `stable_version` for everyone else. The
chosen version is the highest one both sides speak. A client whose versions all lie below the minimum gets
`UpgradeRequiredError` naming them; a client that speaks only versions above its ceiling (a newer build not
yet in the cohort) gets its lowest version the catalog knows, since the registry can read it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from keel.errors import UpgradeRequiredError
from schemas.catalog import Catalog, EntityPolicy, default_catalog

__all__ = ["NegotiatedVersions", "in_rollout_cohort", "negotiate", "offered_versions", "with_rollout"]


def _device_bucket(device_id: str) -> float:
    """A stable number in [0, 100) per device: the same device is always in or out of a percentage."""
    digest = hashlib.sha256(device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100


def in_rollout_cohort(policy: EntityPolicy, tenant_id: str, device_id: str) -> bool:
    """Whether this device gets the entity's newest version."""
    if policy.newest_version == policy.stable_version:
        return True
    return tenant_id in policy.rollout_tenants or _device_bucket(device_id) < policy.rollout_percent


def offered_versions(policy: EntityPolicy, tenant_id: str, device_id: str) -> list[int]:
    """Versions the server offers this device for one entity, oldest first."""
    ceiling = policy.newest_version if in_rollout_cohort(policy, tenant_id, device_id) else policy.stable_version
    return list(range(policy.minimum_version, ceiling + 1))


def with_rollout(
    policy: EntityPolicy, *, tenants: Sequence[str] | None = None, percent: float | None = None
) -> EntityPolicy:
    """The policy with its rollout cohort changed (the feature flag, e.g. from an admin call)."""
    return replace(
        policy,
        rollout_tenants=tuple(tenants) if tenants is not None else policy.rollout_tenants,
        rollout_percent=percent if percent is not None else policy.rollout_percent,
    )


@dataclass(frozen=True)
class NegotiatedVersions:
    """What a handshake agreed: a version per entity, and which entities are in the rollout cohort."""

    versions: dict[str, int]
    in_cohort: dict[str, bool] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)

    def version_of(self, entity: str) -> int | None:
        """Agreed version of an entity (None if the client does not know the entity)."""
        return self.versions.get(entity)


def negotiate(
    client_versions: Mapping[str, Sequence[int]],
    tenant_id: str,
    device_id: str,
    catalog: Catalog | None = None,
    policies: Mapping[str, EntityPolicy] | None = None,
) -> NegotiatedVersions:
    """Choose the version of every entity both sides speak; UpgradeRequiredError if a client is too old."""
    catalog = catalog or default_catalog()
    chosen: dict[str, int] = {}
    cohort: dict[str, bool] = {}
    unsupported: list[str] = []
    for entity in catalog.entities():
        policy = (policies or {}).get(entity) or catalog.policy(entity)
        spoken = sorted({int(v) for v in client_versions.get(entity, ())})
        if not spoken:
            unsupported.append(entity)
            continue
        offered = offered_versions(policy, tenant_id, device_id)
        cohort[entity] = in_rollout_cohort(policy, tenant_id, device_id)
        common = sorted(set(spoken) & set(offered))
        if common:
            chosen[entity] = common[-1]
        elif spoken[-1] < policy.minimum_version:
            raise UpgradeRequiredError(entity, spoken, policy.minimum_version, policy.newest_version)
        else:
            known = [v for v in spoken if v in catalog.versions(entity)]
            if not known:
                raise UpgradeRequiredError(entity, spoken, policy.minimum_version, policy.newest_version)
            chosen[entity] = known[0]
    return NegotiatedVersions(chosen, cohort, unsupported)
