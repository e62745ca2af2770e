"""`keel rollout show | set | clear`: the operator's switch for the live cohorts every gateway reads at handshake."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner, Result

from producers.gateway.rollout import RolloutFlag
from producers.gateway.rollout_cli import describe_rollout, rollout_app
from producers.gateway.rollout_pg_adapter import PgRolloutFlags
from producers.gateway.service import GATEWAY_SQL
from projections.pg_adapter import connect_pool
from projections.sql_migrations import PROJECTOR_SQL
from projections.sql_migrator_adapter import migrate
from schemas.catalog import default_catalog
from tests.support.services import Services

runner = CliRunner()


def test_the_cohort_in_force_is_the_flag_else_subjects_toml() -> None:
    catalog = default_catalog()
    rows = {
        row["entity"]: row
        for row in describe_rollout(catalog, {"task": RolloutFlag("task", ("acme",), 5.0), "gone": RolloutFlag("gone")})
    }
    assert rows["task"]["in_force"] == {"tenants": ["acme"], "percent": 5.0}
    assert rows["task"]["configured"] == {
        "tenants": list(catalog.policy("task").rollout_tenants),
        "percent": catalog.policy("task").rollout_percent,
    }
    assert rows["task"]["has_rollout"], "task stages v3 beyond the stable v2"
    assert rows["comment"]["flag"] is None
    assert rows["comment"]["in_force"] == rows["comment"]["configured"]
    assert not rows["comment"]["has_rollout"]
    assert rows["gone"]["unknown"], "a flag of an entity this build does not know is shown, and ignored"


def test_unusable_input_is_exit_2_before_touching_the_database() -> None:
    nowhere = ["--database-url", "postgresql://nobody@127.0.0.1:1/none", "--schema", "none"]
    unknown = runner.invoke(rollout_app, ["set", "invoice", "--percent", "5", *nowhere])
    assert unknown.exit_code == 2
    assert "unknown entity type 'invoice'" in unknown.output
    too_much = runner.invoke(rollout_app, ["set", "task", "--percent", "150", *nowhere])
    assert too_much.exit_code == 2
    assert "rollout percent must be within 0..100, got 150" in too_much.output


def _stored_flags(services: Services, schema: str) -> dict[str, RolloutFlag]:
    """What every gateway reads at handshake."""

    async def read() -> dict[str, RolloutFlag]:
        pool = await connect_pool(services.database_url, max_size=1)
        try:
            return await PgRolloutFlags(pool, schema).flags()
        finally:
            await pool.close()

    return asyncio.run(read())


@pytest.mark.integration
class TestOnPostgres:
    """The commands are synchronous (each runs its own event loop), so these tests are too."""

    @pytest.fixture
    def schema(self, services: Services, pg_schema: str) -> str:
        async def migrated() -> None:
            pool = await connect_pool(services.database_url, max_size=1)
            try:
                await migrate(pool, pg_schema, (PROJECTOR_SQL, GATEWAY_SQL))
            finally:
                await pool.close()

        asyncio.run(migrated())
        return pg_schema

    @staticmethod
    def invoke(services: Services, schema: str, *args: str) -> Result:
        return runner.invoke(rollout_app, [*args, "--database-url", services.database_url, "--schema", schema])

    def test_set_replaces_show_reports_and_clear_drops_a_flag(self, services: Services, schema: str) -> None:
        shown = self.invoke(services, schema, "show", "--json")
        assert shown.exit_code == 0, shown.output
        assert {row["entity"]: row["flag"] for row in json.loads(shown.output)} == {
            "comment": None,
            "project": None,
            "task": None,
        }

        done = self.invoke(services, schema, "set", "task", "--tenants", "acme, globex,acme", "--percent", "2.5")
        assert done.exit_code == 0, done.output
        assert "task: v3 goes to tenants acme, globex + 2.5% of devices" in done.output
        assert _stored_flags(services, schema) == {"task": RolloutFlag("task", ("acme", "globex"), 2.5)}
        replaced = self.invoke(services, schema, "set", "task", "--percent", "10")
        assert replaced.exit_code == 0, replaced.output
        assert _stored_flags(services, schema) == {"task": RolloutFlag("task", (), 10.0)}, "set replaces the cohort"

        table = self.invoke(services, schema, "show")
        assert table.exit_code == 0, table.output
        assert "10% of devices" in table.output
        rows = {row["entity"]: row for row in json.loads(self.invoke(services, schema, "show", "--json").output)}
        assert rows["task"]["in_force"] == {"tenants": [], "percent": 10.0}

        cleared = self.invoke(services, schema, "clear", "task")
        assert cleared.exit_code == 0, cleared.output
        assert _stored_flags(services, schema) == {}
        again = self.invoke(services, schema, "clear", "task")
        assert again.exit_code == 1
        assert "no live rollout flag for task" in again.output

    def test_a_cohort_for_an_entity_with_nothing_staged_says_it_changes_nothing(
        self, services: Services, schema: str
    ) -> None:
        done = self.invoke(services, schema, "set", "comment", "--tenants", "acme")
        assert done.exit_code == 0, done.output
        assert "changes nothing until a newer version is staged" in " ".join(done.output.split())
        assert _stored_flags(services, schema) == {"comment": RolloutFlag("comment", ("acme",), 0.0)}

    def test_an_unreachable_database_is_exit_2(self) -> None:
        result = runner.invoke(
            rollout_app, ["show", "--database-url", "postgresql://keel:keel@127.0.0.1:1/keel", "--schema", "x"]
        )
        assert result.exit_code == 2
        assert "ServiceUnavailableError" in result.output
