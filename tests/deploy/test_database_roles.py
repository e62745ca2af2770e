"""Least-privilege PostgreSQL roles: each service role can run its own code and nothing else.

Runs against the secure stack's PostgreSQL (passwords required over TCP), in a schema and with role names of
each test alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from deploy.local.credentials import new_password
from deploy.local.database_roles import RoleNames, RolesReport, provision_roles, role_dsn, table_policy
from keel.errors import ConfigurationError
from producers.gateway.devices_pg_adapter import PgDeviceDirectory
from producers.gateway.push_ledger import Outcome, SeqOutcome
from producers.gateway.push_ledger_pg_adapter import PgPushLedger
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.outbox_pg_adapter import PgOutbox
from projections.pg_adapter import connect_pool
from projections.pg_store_adapter import PgProjectionStore
from schemas.catalog import default_catalog
from tests.consumers.helpers import EventFactory
from tests.deploy.conftest import SecureStack, keel
from tests.support.naming import unique_identifier

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Provisioned:
    """Roles provisioned on one schema, with their DSNs."""

    schema: str
    owner_dsn: str
    names: RoleNames
    passwords: dict[str, str]
    report: RolesReport

    def dsn(self, kind: str) -> str:
        """DSN of one role kind (gateway, projector, readonly)."""
        role = self.names.by_kind()[kind]
        return role_dsn(self.owner_dsn, role, self.passwords[role])


@pytest.fixture
async def provisioned(secure_stack: SecureStack, pg_schema: str) -> Provisioned:
    names = RoleNames.prefixed(unique_identifier("r"))
    passwords = {role: new_password() for role in names.by_kind().values()}
    owner = secure_stack.stack.postgres().dsn
    report = await provision_roles(owner, pg_schema, passwords, names=names)
    return Provisioned(pg_schema, owner, names, passwords, report)


@pytest.fixture
async def owner(provisioned: Provisioned) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(provisioned.owner_dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def _outcomes(dsn: str, schema: str, statements: list[str]) -> dict[str, str]:
    """Statement → "ok" or the error class name; each runs in its own transaction, rolled back."""
    connection = await asyncpg.connect(dsn)
    results: dict[str, str] = {}
    try:
        for statement in statements:
            transaction = connection.transaction()
            await transaction.start()
            try:
                await connection.execute(statement.replace("{s}", f'"{schema}"'))
                results[statement] = "ok"
            except asyncpg.PostgresError as error:
                results[statement] = type(error).__name__
            finally:
                await transaction.rollback()
    finally:
        await connection.close()
    return results


DEVICE_ROW = (
    "INSERT INTO {s}.devices (device_id, tenant_id, secret_sha256) VALUES (gen_random_uuid()::text, 't', '\\x00')"
)
TASK_ROW = "INSERT INTO {s}.task (tenant_id, entity_id, title) VALUES ('t', gen_random_uuid()::text, 'x')"
OUTBOX_ROW = "INSERT INTO {s}.outbox (tenant_id, kind, body) VALUES ('t', 'change', '{}')"
CURSOR_ROW = (
    "INSERT INTO {s}.device_cursors (tenant_id, device_id, cursor, cursor_tx, cursor_pos) VALUES ('t', 'd', 'c', "
    "'1'::xid8, 1) ON CONFLICT (tenant_id, device_id) DO UPDATE SET cursor = excluded.cursor"
)
APPLIED_ROW = (
    "INSERT INTO {s}.applied_ops (device_id, device_seq, event_id, tenant_id, entity_type, entity_id, topic, "
    "partition, log_offset) VALUES ('d', 1, 'e', 't', 'task', 'x', 'k.task.changes', 0, 0)"
)
ROLLOUT_ROW = "INSERT INTO {s}.rollout_flags (entity, tenants, percent) VALUES ('task', '{acme}', 5)"

CASES: dict[str, dict[str, list[str]]] = {
    "gateway": {
        "allowed": [
            DEVICE_ROW,
            "UPDATE {s}.devices SET label = 'x', last_handshake_at = now() WHERE device_id = 'nobody'",
            (
                "INSERT INTO {s}.device_heads (device_id, tenant_id, head_seq) VALUES ('d', 't', 1) "
                "ON CONFLICT (device_id) DO UPDATE SET head_seq = excluded.head_seq"
            ),
            "INSERT INTO {s}.device_seq_outcomes (device_id, seq, event_id, outcome) VALUES ('d', 1, 'e', 'accepted')",
            CURSOR_ROW,
            "SELECT count(*) FROM {s}.outbox",
            "SELECT count(*) FROM {s}.outbox_horizons",
            "SELECT count(*) FROM {s}.task",
            "SELECT version FROM {s}.schema_migrations",
            "SELECT entity, tenants, percent FROM {s}.rollout_flags",
        ],
        "denied": [
            "UPDATE {s}.task SET title = 'x'",
            ROLLOUT_ROW,
            "DELETE FROM {s}.rollout_flags",
            TASK_ROW,
            OUTBOX_ROW,
            "DELETE FROM {s}.outbox",
            "SELECT count(*) FROM {s}.applied_ops",
            "UPDATE {s}.consumer_offsets SET next_offset = 0",
            "DELETE FROM {s}.devices",
            "UPDATE {s}.device_seq_outcomes SET outcome = 'rejected'",
            "TRUNCATE {s}.device_heads",
            "SELECT count(*) FROM {s}.projection_snapshots",
            "CREATE TABLE {s}.evil (x int)",
        ],
    },
    "projector": {
        "allowed": [
            TASK_ROW,
            "UPDATE {s}.project SET name = 'y' WHERE entity_id = 'nobody'",
            OUTBOX_ROW,
            "DELETE FROM {s}.outbox WHERE tenant_id = 'nobody'",
            APPLIED_ROW,
            "INSERT INTO {s}.consumer_offsets (group_id, topic, partition, next_offset) VALUES ('g', 't', 0, 1)",
            "UPDATE {s}.consumer_offsets SET next_offset = 2 WHERE group_id = 'nobody'",
            "SELECT count(*) FROM {s}.device_cursors",
        ],
        "denied": [
            "SELECT count(*) FROM {s}.devices",
            DEVICE_ROW,
            CURSOR_ROW,
            "UPDATE {s}.applied_ops SET event_id = 'x'",
            "DELETE FROM {s}.task",
            "UPDATE {s}.device_heads SET head_seq = 0",
            "SELECT nextval('{s}.operator_seq')",
            "SELECT count(*) FROM {s}.rollout_flags",
            "DROP TABLE {s}.task",
            "CREATE TABLE {s}.evil (x int)",
        ],
    },
    "readonly": {
        "allowed": [
            "SELECT count(*) FROM {s}.task",
            "SELECT device_id, tenant_id, label, versions FROM {s}.devices",
            "SELECT count(*) FROM {s}.consumer_offsets",
            "SELECT count(*) FROM {s}.projection_snapshots",
            "SELECT count(*) FROM {s}.rollout_flags",
        ],
        "denied": [
            "SELECT secret_sha256 FROM {s}.devices",
            ROLLOUT_ROW,
            "SELECT * FROM {s}.devices",
            TASK_ROW,
            "UPDATE {s}.outbox SET kind = 'x'",
            "DELETE FROM {s}.applied_ops",
            "CREATE TABLE {s}.evil (x int)",
        ],
    },
}


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_each_role_may_do_its_work_and_nothing_else(provisioned: Provisioned, kind: str) -> None:
    cases = CASES[kind]
    outcomes = await _outcomes(provisioned.dsn(kind), provisioned.schema, cases["allowed"] + cases["denied"])
    refused = {sql: outcome for sql, outcome in outcomes.items() if sql in cases["allowed"] and outcome != "ok"}
    assert refused == {}, f"{kind} was refused what it needs"
    leaked = {sql: o for sql, o in outcomes.items() if sql in cases["denied"] and o != "InsufficientPrivilegeError"}
    assert leaked == {}, f"{kind} was not denied (with 42501 insufficient_privilege)"


def test_every_table_of_the_migrations_has_a_policy(provisioned: Provisioned) -> None:
    report = provisioned.report
    assert report.unclassified == []
    assert report.migrations_applied, "the schema was migrated by the owner first"
    policy = table_policy(default_catalog().entities())
    names = provisioned.names
    for kind, role in names.by_kind().items():
        assert report.privileges[role] == {t: list(p) for t, p in policy[kind].items()}, kind


async def test_the_services_own_adapters_work_under_their_roles(provisioned: Provisioned) -> None:
    schema = provisioned.schema
    factory = EventFactory(seed=7)
    events = factory.random_task_events(20, devices=2, entities=4)
    topic = TopicPartition("k.task.changes", 0)
    sourced = tuple(SourcedEvent(e, SourcePosition(topic.topic, 0, i), 1) for i, e in enumerate(events))
    batch = ProjectionBatch("g", (OffsetAdvance(topic, None, len(events)),), sourced)
    projector = await connect_pool(provisioned.dsn("projector"), max_size=2)
    try:
        outcome = await PgProjectionStore(projector, schema).apply_batch(batch)
        assert outcome.committed
        assert outcome.applied == len(events)
    finally:
        await projector.close()
    gateway = await connect_pool(provisioned.dsn("gateway"), max_size=2)
    try:
        rows = await PgProjectionStore(gateway, schema).visible_rows("task", "tenant-a")
        assert rows
        outbox = PgOutbox(gateway, schema)
        page = await outbox.read("tenant-a", "dev-0", None)
        assert page.entries
        await outbox.acknowledge("tenant-a", "dev-0", page.next_cursor)
        directory = PgDeviceDirectory(gateway, schema)
        device, secret = await directory.enroll("tenant-a", None, "laptop")
        assert (await directory.authenticate("tenant-a", device.device_id, secret)).device_id == device.device_id
        ledger = PgPushLedger(gateway, schema)
        async with ledger.session("tenant-a", device.device_id) as session:
            await session.record([SeqOutcome(1, "event-1", Outcome.ACCEPTED)], 1)
        assert await ledger.head(device.device_id) == 1
    finally:
        await gateway.close()


async def test_passwords_are_required_over_tcp(provisioned: Provisioned) -> None:
    role = provisioned.names.gateway
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(role_dsn(provisioned.owner_dsn, role, new_password()))
    superuser = provisioned.owner_dsn.replace("keel:keel@", "postgres@")
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InterfaceError)):
        await asyncpg.connect(superuser)


async def test_a_rerun_revokes_what_was_granted_by_hand(provisioned: Provisioned, owner: asyncpg.Connection) -> None:
    schema, gateway = provisioned.schema, provisioned.names.gateway
    await owner.execute(f'GRANT DELETE, TRUNCATE ON "{schema}".task TO "{gateway}"')
    before = await _outcomes(provisioned.dsn("gateway"), schema, ["DELETE FROM {s}.task"])
    assert before == {"DELETE FROM {s}.task": "ok"}
    again = await provision_roles(
        provisioned.owner_dsn, schema, provisioned.passwords, names=provisioned.names, apply_migrations=False
    )
    assert again.privileges == provisioned.report.privileges
    after = await _outcomes(provisioned.dsn("gateway"), schema, ["DELETE FROM {s}.task"])
    assert after == {"DELETE FROM {s}.task": "InsufficientPrivilegeError"}


async def test_bad_names_and_missing_passwords_are_refused(provisioned: Provisioned) -> None:
    with pytest.raises(ConfigurationError, match="not a usable PostgreSQL name"):
        await provision_roles(provisioned.owner_dsn, "Bad-Schema", provisioned.passwords, names=provisioned.names)
    with pytest.raises(ConfigurationError, match="no password given"):
        await provision_roles(provisioned.owner_dsn, provisioned.schema, {}, names=provisioned.names)
    weak = dict.fromkeys(provisioned.passwords, "short'; DROP ROLE x; --")
    with pytest.raises(ConfigurationError, match="URL-safe base64"):
        await provision_roles(provisioned.owner_dsn, provisioned.schema, weak, names=provisioned.names)


async def test_rotating_a_role_password_locks_out_the_old_one(secure_stack: SecureStack) -> None:
    before = secure_stack.stack.role_dsns()["gateway"]
    result = keel(secure_stack, "stack", "rotate-password", "keel_gateway")
    assert result.returncode == 0, result.stderr
    after = secure_stack.stack.role_dsns()["gateway"]
    assert after != before
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(before)
    connection = await asyncpg.connect(after)
    try:
        schema = secure_stack.settings.pg_schema
        assert await connection.fetchval(f'SELECT count(*) FROM "{schema}".devices') >= 0
    finally:
        await connection.close()
