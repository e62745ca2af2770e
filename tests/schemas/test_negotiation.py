"""Version negotiation at handshake: client versions by server policies by rollout cohorts."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from keel.errors import UpgradeRequiredError
from schemas.catalog import EntityPolicy, default_catalog
from schemas.negotiation import in_rollout_cohort, negotiate, offered_versions, with_rollout

CATALOG = default_catalog()
TASK = CATALOG.policy("task")

# (minimum, stable, newest) of the task entity; the catalog knows v1..v3.
POLICIES = {
    "rollout-v3": (1, 2, 3),
    "all-on-v3": (1, 3, 3),
    "min-v2": (2, 2, 3),
    "only-v3": (3, 3, 3),
}
# Cohort flags: tenant list and/or percentage of devices.
COHORTS = {
    "nobody": ((), 0.0),
    "tenant-acme": (("acme",), 0.0),
    "every-device": ((), 100.0),
}
TENANTS = ("acme", "globex")
CLIENTS = ((1,), (1, 2), (1, 2, 3), (2, 3), (3,), (4,))
UPGRADE = "upgrade"
# Expected version per (minimum, ceiling the device is offered) and client; written out by hand from the rules
# in schemas/negotiation.py: the highest common version; a client above its ceiling gets its lowest version
# the catalog knows; below the minimum (or nothing known) it must upgrade.
EXPECTED: dict[tuple[int, int], dict[tuple[int, ...], int | str]] = {
    (1, 2): {(1,): 1, (1, 2): 2, (1, 2, 3): 2, (2, 3): 2, (3,): 3, (4,): UPGRADE},
    (1, 3): {(1,): 1, (1, 2): 2, (1, 2, 3): 3, (2, 3): 3, (3,): 3, (4,): UPGRADE},
    (2, 2): {(1,): UPGRADE, (1, 2): 2, (1, 2, 3): 2, (2, 3): 2, (3,): 3, (4,): UPGRADE},
    (2, 3): {(1,): UPGRADE, (1, 2): 2, (1, 2, 3): 3, (2, 3): 3, (3,): 3, (4,): UPGRADE},
    (3, 3): {(1,): UPGRADE, (1, 2): UPGRADE, (1, 2, 3): 3, (2, 3): 3, (3,): 3, (4,): UPGRADE},
}
MATRIX = list(itertools.product(POLICIES, COHORTS, TENANTS, CLIENTS))


def _policy(name: str, cohort: str) -> EntityPolicy:
    minimum, stable, newest = POLICIES[name]
    tenants, percent = COHORTS[cohort]
    base = replace(TASK, minimum_version=minimum, stable_version=stable, newest_version=newest)
    return with_rollout(base, tenants=tenants, percent=percent)


@pytest.mark.parametrize(
    ("policy_name", "cohort", "tenant", "client"),
    MATRIX,
    ids=[f"{p}-{c}-{t}-client{'+'.join(map(str, v))}" for p, c, t, v in MATRIX],
)
def test_negotiation_matrix(policy_name: str, cohort: str, tenant: str, client: tuple[int, ...]) -> None:
    policy = _policy(policy_name, cohort)
    minimum, stable, newest = POLICIES[policy_name]
    tenants, percent = COHORTS[cohort]
    in_cohort = stable == newest or tenant in tenants or percent == 100.0
    ceiling = newest if in_cohort else stable
    expected = EXPECTED[(minimum, ceiling)][client]
    clients = {"task": client, "project": (1,), "comment": (1,)}
    assert in_rollout_cohort(policy, tenant, "device-1") is in_cohort
    assert offered_versions(policy, tenant, "device-1") == list(range(minimum, ceiling + 1))
    if expected == UPGRADE:
        with pytest.raises(UpgradeRequiredError) as raised:
            negotiate(clients, tenant, "device-1", CATALOG, {"task": policy})
        error = raised.value
        assert (error.entity, error.client_versions, error.minimum, error.newest) == (
            "task",
            list(client),
            minimum,
            newest,
        )
        assert f"client speaks versions {list(client)}" in str(error)
        assert f"at least v{minimum} (newest is v{newest})" in str(error)
        return
    agreed = negotiate(clients, tenant, "device-1", CATALOG, {"task": policy})
    assert agreed.version_of("task") == expected
    assert agreed.in_cohort["task"] is in_cohort
    assert (agreed.version_of("project"), agreed.version_of("comment"), agreed.unsupported) == (1, 1, [])


def test_an_entity_the_client_does_not_know_is_listed_not_negotiated() -> None:
    agreed = negotiate({"task": [1, 2]}, "acme", "device-1", CATALOG)
    assert agreed.versions == {"task": 2}
    assert agreed.unsupported == ["comment", "project"]
    assert agreed.version_of("comment") is None


@pytest.mark.parametrize("percent", [10.0, 50.0, 90.0])
def test_a_percentage_cohort_is_a_stable_share_of_devices(percent: float) -> None:
    policy = with_rollout(TASK, percent=percent)
    devices = [f"device-{n}" for n in range(4000)]
    inside = [d for d in devices if in_rollout_cohort(policy, "globex", d)]
    assert abs(len(inside) / len(devices) * 100 - percent) < 3.0
    assert inside == [d for d in devices if in_rollout_cohort(policy, "globex", d)], "same devices every time"
    wider = with_rollout(TASK, percent=min(100.0, percent + 20))
    assert all(in_rollout_cohort(wider, "globex", d) for d in inside), "raising the share never drops a device"
    versions = {
        negotiate({"task": [1, 2, 3]}, "globex", d, CATALOG, {"task": policy}).version_of("task") for d in inside
    }
    assert versions == {3}


def test_tenant_list_and_percentage_combine() -> None:
    policy = with_rollout(TASK, tenants=["acme"], percent=0.0)
    assert in_rollout_cohort(policy, "acme", "any-device")
    assert not in_rollout_cohort(policy, "globex", "any-device")
    widened = with_rollout(policy, percent=100.0)
    assert widened.rollout_tenants == ("acme",)
    assert in_rollout_cohort(widened, "globex", "any-device")
