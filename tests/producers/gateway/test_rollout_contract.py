"""One contract, two rollout-flag stores (the in-memory fake and PostgreSQL), and the handshake that reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keel.errors import ValidationError
from producers.gateway.devices import InMemoryDeviceDirectory
from producers.gateway.push_ledger import InMemoryPushLedger
from producers.gateway.rollout import InMemoryRolloutFlags, RolloutFlag, RolloutFlags, policies_with_flags
from producers.gateway.rollout_pg_adapter import PgRolloutFlags
from producers.gateway.sessions import SessionService
from producers.gateway.tokens import TokenAuthority
from producers.wire import EnrollRequest, HandshakeRequest, Limits
from schemas.catalog import default_catalog
from tests.producers.gateway.pg import gateway_pool


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def flags(request: pytest.FixtureRequest) -> AsyncIterator[RolloutFlags]:
    if request.param == "fake":
        yield InMemoryRolloutFlags()
        return
    async with gateway_pool(request) as (pool, schema):
        yield PgRolloutFlags(pool, schema)


async def test_a_flag_is_set_replaced_and_cleared(flags: RolloutFlags) -> None:
    assert await flags.flags() == {}
    await flags.set_flag(RolloutFlag("task", ("acme",), 0.0))
    await flags.set_flag(RolloutFlag("comment", (), 12.5))
    assert await flags.flags() == {
        "task": RolloutFlag("task", ("acme",), 0.0),
        "comment": RolloutFlag("comment", (), 12.5),
    }
    await flags.set_flag(RolloutFlag("task", ("acme", "globex"), 5.0))
    assert (await flags.flags())["task"] == RolloutFlag("task", ("acme", "globex"), 5.0)
    await flags.clear_flag("task")
    await flags.clear_flag("never-set")
    assert set(await flags.flags()) == {"comment"}


@pytest.mark.parametrize(
    ("entity", "tenants", "percent", "field"),
    [
        ("", (), 0.0, "entity"),
        ("task", (), 100.5, "percent"),
        ("task", (), float("nan"), "percent"),
        ("task", ("",), 0.0, "tenants"),
    ],
)
def test_a_bad_flag_is_refused_with_the_field(
    entity: str, tenants: tuple[str, ...], percent: float, field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        RolloutFlag(entity, tenants, percent)
    assert raised.value.field == field


def test_flags_replace_the_cohort_of_subjects_toml_and_ignore_unknown_entities() -> None:
    catalog = default_catalog()
    policies = policies_with_flags(catalog, {"task": RolloutFlag("task", ("acme",)), "gadget": RolloutFlag("gadget")})
    assert set(policies) == {"task"}
    assert policies["task"].rollout_tenants == ("acme",)
    assert policies["task"].newest_version == catalog.policy("task").newest_version


async def test_a_handshake_after_a_flag_changes_offers_the_newest_version_to_the_cohort_only() -> None:
    flags = InMemoryRolloutFlags()
    directory = InMemoryDeviceDirectory()
    sessions = SessionService(
        directory=directory,
        ledger=InMemoryPushLedger(),
        tokens=TokenAuthority.generate(),
        limits=Limits(max_batch_ops=10, max_body_bytes=1024, max_op_bytes=512),
        enrollment_secret="s3cret",
        rollout=flags,
    )
    secrets = {}
    for tenant in ("acme", "globex"):
        enrolled = await sessions.enroll(EnrollRequest(tenant_id=tenant, enrollment_secret="s3cret", device_id=tenant))
        secrets[tenant] = enrolled.device_secret

    async def task_version(tenant: str) -> int:
        request = HandshakeRequest(
            tenant_id=tenant, device_id=tenant, device_secret=secrets[tenant], versions={"task": [1, 2, 3]}
        )
        return (await sessions.handshake(request)).versions["task"]

    assert [await task_version("acme"), await task_version("globex")] == [2, 2]
    await flags.set_flag(RolloutFlag("task", ("acme",)))
    assert [await task_version("acme"), await task_version("globex")] == [3, 2]
    stored = await directory.get("acme")
    assert stored is not None
    assert stored.versions["task"] == 3
    await flags.clear_flag("task")
    assert await task_version("acme") == 2
