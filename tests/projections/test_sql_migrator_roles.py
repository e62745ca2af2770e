"""Services under their least-privilege roles on a schema the owner migrated: no DDL at start, and the whole
data path (signed device → gateway → Kafka → projector → PostgreSQL) works; a role that would need to migrate
is told to have the owner do it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.local.credentials import new_password
from deploy.local.database_roles import GATEWAY_SQL, RoleNames, provision_roles, role_dsn
from keel.errors import ConfigurationError
from keel.settings import Settings
from producers.gateway.service import GatewayServer
from projections.pg_adapter import connect_pool
from projections.sql_migrations import PROJECTOR_SQL
from projections.sql_migrator_adapter import migrate
from tests.producers.live import LiveKeel, live_settings, projector
from tests.support.naming import unique_identifier
from tests.support.services import Services

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Roles:
    """A schema migrated by its owner, and the DSN of each service role on it."""

    settings: Settings
    gateway: str
    projector: str


@pytest.fixture
async def roles(services: Services) -> Roles:
    settings = live_settings(services)
    names = RoleNames.prefixed(unique_identifier("lp"))
    passwords = {role: new_password() for role in names.by_kind().values()}
    report = await provision_roles(services.database_url, settings.pg_schema, passwords, names=names)
    security = {"token_signing_keys", "device_keys", "chain_links", "chain_heads", "audit_checkpoints"}
    assert not security & set(report.unclassified), "every security table has a policy"
    return Roles(
        settings,
        role_dsn(services.database_url, names.gateway, passwords[names.gateway]),
        role_dsn(services.database_url, names.projector, passwords[names.projector]),
    )


async def test_services_start_and_work_under_their_roles_on_a_migrated_schema(roles: Roles, tmp_path: Path) -> None:
    for dsn, directories in ((roles.gateway, (PROJECTOR_SQL, GATEWAY_SQL)), (roles.projector, (PROJECTOR_SQL,))):
        pool = await connect_pool(dsn, max_size=1)
        try:
            assert await migrate(pool, roles.settings.pg_schema, directories) == []
        finally:
            await pool.close()
    gateway = GatewayServer(roles.settings.model_copy(update={"database_url": roles.gateway}))
    owner = await connect_pool(roles.settings.database_url, max_size=1)
    try:
        url = await gateway.start()
        async with projector(roles.settings.model_copy(update={"database_url": roles.projector})):
            keel = LiveKeel(roles.settings, owner, url)
            device = await keel.device(tmp_path / "d.db")
            try:
                device.upsert("task", "t-1", {"title": "least privilege"})
                await device.sync()
                await keel.wait_projected(device)
            finally:
                await device.close()
        heads = await keel.fetch("SELECT head_seq FROM {schema}.chain_heads WHERE device_id = $1", device.device_id)
        assert [r["head_seq"] for r in heads] == [1]
    finally:
        await gateway.stop()
        await owner.close()


async def test_a_role_that_would_have_to_migrate_is_told_to_have_the_owner_do_it(roles: Roles, tmp_path: Path) -> None:
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "299_later.sql").write_text("CREATE TABLE {schema}.later (id int);")
    pool = await connect_pool(roles.projector, max_size=1)
    try:
        with pytest.raises(ConfigurationError, match=r"needs migrations \(299_later.sql\).*keel stack roles"):
            await migrate(pool, roles.settings.pg_schema, (PROJECTOR_SQL, newer))
        with pytest.raises(ConfigurationError, match="may not run DDL"):
            await migrate(pool, unique_identifier("missing"))
    finally:
        await pool.close()
