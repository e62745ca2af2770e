"""Least-privilege PostgreSQL roles of the services: each gets exactly the table privileges its code uses.

The owner role (`keel` on the local stack) owns every schema, applies migrations and runs operator
tooling (rebuild, snapshots, overrides). Services log in as:

    keel_gateway    devices, device heads and seq outcomes read-write; the outbox feed read-only,
                    device cursors read-write; entity tables read-only (state sync and digests);
                    rollout flags read-only (read at every handshake; `keel rollout` writes them as the owner)
    keel_projector  entity tables, decisions, outbox (append; delete for pruning), outbox horizons,
                    applied_ops and consumer_offsets read-write; device cursors read-only (compaction);
                    relay cursors read-write (the state relay logs in as this role: it reads the outbox
                    and entity tables and stores its own position)
    keel_readonly   SELECT on every table, except columns holding secrets (devices.secret_sha256)

Privileges are listed per table below, derived from the SQL the adapters run. A table no policy names
(a new migration) gets no privilege at all and is reported, so a new table is never readable by accident;
tests fail until the policy names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

import producers.gateway
from keel.errors import ConfigurationError
from projections.pg_adapter import connect_pool, pg_errors
from projections.sql_migrations import PROJECTOR_SQL, quote_ident
from projections.sql_migrator_adapter import migrate

__all__ = [
    "GATEWAY_SQL",
    "RoleNames",
    "RolesReport",
    "provision_roles",
    "role_dsn",
    "set_role_password",
    "table_policy",
]

# The gateway's migration folder (producers.gateway.service.GATEWAY_SQL, without importing the web stack).
GATEWAY_SQL = Path(producers.gateway.__file__).parent / "sql"

_READ = ("SELECT",)
_READ_WRITE = ("SELECT", "INSERT", "UPDATE")
_APPEND = ("SELECT", "INSERT")

# table → privileges, per service; entity tables are added from the catalog.
_GATEWAY: dict[str, tuple[str, ...]] = {
    "devices": _READ_WRITE,
    "device_heads": _READ_WRITE,
    "device_seq_outcomes": _APPEND,
    "outbox": _READ,
    "outbox_horizons": _READ,
    "device_cursors": _READ_WRITE,
    "schema_migrations": _READ,
    # Security (docs/security.md): token keys are rotated by `keel tokens rotate` or created at start;
    # device keys are registered at enrolment and rotation; chain heads are read for handshakes.
    "token_signing_keys": _READ_WRITE,
    "device_keys": _APPEND,
    # Read at every handshake; only operators change cohorts (`keel rollout set | clear`, as the owner).
    "rollout_flags": _READ,
}
_PROJECTOR: dict[str, tuple[str, ...]] = {
    "applied_ops": _APPEND,
    "conflict_decisions": _APPEND,
    "consumer_offsets": _READ_WRITE,
    # DELETE: `keel projections compact` prunes acknowledged rows as the projector.
    "outbox": ("SELECT", "INSERT", "DELETE"),
    "outbox_horizons": _READ_WRITE,
    "device_cursors": _READ,
    "schema_migrations": _READ,
    # Security (docs/security.md): verify signatures, record chains, write periodic checkpoints.
    "device_keys": _READ,
    "chain_links": _APPEND,
    "chain_heads": _READ_WRITE,
    "audit_checkpoints": _APPEND,
    # The state relay (consumers/state_relay.py) runs as this role: its cursor, besides the reads above.
    "relay_cursors": _READ_WRITE,
}
# Operator tooling (snapshots, rebuild swaps, override sequence) runs as the owner; readonly may look.
_OWNER_ONLY = ("projection_snapshots",)
# Columns no role but the owner and the gateway may read.
_SECRET_COLUMNS: dict[str, tuple[str, ...]] = {"devices": ("secret_sha256",), "token_signing_keys": ("private_pem",)}
# Sequences behind bigserial columns a role inserts into: (table, column) → roles needing USAGE.
_SERIALS = {("outbox", "pos"): ("projector",), ("audit_checkpoints", "checkpoint_id"): ("projector",)}

_PASSWORD = re.compile(r"^[A-Za-z0-9_-]{24,128}$")


@dataclass(frozen=True)
class RoleNames:
    """Names of the three service roles."""

    gateway: str = "keel_gateway"
    projector: str = "keel_projector"
    readonly: str = "keel_readonly"

    @classmethod
    def prefixed(cls, prefix: str) -> RoleNames:
        """Roles named `<prefix>_gateway` etc. (tests use a prefix of their own)."""
        return cls(f"{prefix}_gateway", f"{prefix}_projector", f"{prefix}_readonly")

    def by_kind(self) -> dict[str, str]:
        """Kind (gateway, projector, readonly) → role name."""
        return {"gateway": self.gateway, "projector": self.projector, "readonly": self.readonly}


@dataclass(frozen=True)
class RolesReport:
    """What `provision_roles` granted in one schema."""

    schema: str
    roles: dict[str, str]
    privileges: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    unclassified: list[str] = field(default_factory=list)
    migrations_applied: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "schema": self.schema,
            "roles": self.roles,
            "privileges": self.privileges,
            "unclassified": self.unclassified,
            "migrations_applied": self.migrations_applied,
        }


def table_policy(entities: list[str]) -> dict[str, dict[str, tuple[str, ...]]]:
    """Kind → table → privileges for a schema whose entity tables are `entities`."""
    gateway = dict(_GATEWAY) | dict.fromkeys(entities, _READ)
    projector = dict(_PROJECTOR) | dict.fromkeys(entities, _READ_WRITE)
    readonly: dict[str, tuple[str, ...]] = dict.fromkeys([*gateway, *projector, *_OWNER_ONLY], _READ)
    return {"gateway": gateway, "projector": projector, "readonly": readonly}


def role_dsn(owner_dsn: str, role: str, password: str) -> str:
    """`owner_dsn` with the user and password of `role` (same host, port and database)."""
    parts = urlsplit(owner_dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _literal_password(password: str, role: str) -> str:
    # Utility statements take no bind parameters; only URL-safe base64 passwords are embedded.
    if not _PASSWORD.match(password):
        raise ConfigurationError(f"password of role {role}: 24-128 URL-safe base64 characters expected")
    return f"'{password}'"


async def _ensure_role(connection: Any, role: str, password: str) -> None:
    ident = quote_ident(role)
    secret = _literal_password(password, role)
    exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        try:
            await connection.execute(
                f"CREATE ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                f"PASSWORD {secret}"
            )
        except asyncpg.DuplicateObjectError:
            pass  # created concurrently by another provisioning run: fall through to ALTER
        else:
            return
    # Only a superuser may even restate the superuser, replication and bypassrls attributes: check them.
    await connection.execute(f"ALTER ROLE {ident} LOGIN NOCREATEDB NOCREATEROLE PASSWORD {secret}")
    powerful = await connection.fetchval(
        "SELECT rolsuper OR rolreplication OR rolbypassrls FROM pg_roles WHERE rolname = $1", role
    )
    if powerful:
        raise ConfigurationError(f"role {role} exists with superuser, replication or bypassrls: refusing to use it")


async def set_role_password(owner_dsn: str, role: str, password: str) -> None:
    """Give an existing service role a new password (sessions already open stay open)."""
    ident = quote_ident(role)
    secret = _literal_password(password, role)
    connection = await asyncpg.connect(owner_dsn)
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            raise ConfigurationError(f"role {role} does not exist; `keel stack roles` creates it")
        await connection.execute(f"ALTER ROLE {ident} PASSWORD {secret}")
    finally:
        await connection.close()


async def provision_roles(
    owner_dsn: str,
    schema: str,
    passwords: Mapping[str, str],
    *,
    names: RoleNames | None = None,
    entities: list[str] | None = None,
    apply_migrations: bool = True,
) -> RolesReport:
    """Create (or update) the service roles and grant them exactly their privileges on `schema`.

    Runs as the schema's owner. Migrations are applied first (the services cannot: they may not run DDL),
    then in one transaction every privilege of the roles on the schema is revoked and the policy granted,
    so a re-run after a policy change leaves no stale privilege and sessions never see a half-state.
    `passwords` maps role name → password.
    """
    roles = names or RoleNames()
    if entities is None:
        from schemas.catalog import default_catalog

        entities = default_catalog().entities()
    quote_ident(schema)  # refuse an unusable name before connecting
    kinds = roles.by_kind()
    for role in kinds.values():
        if role not in passwords:
            raise ConfigurationError(f"no password given for role {role}")
    policy = table_policy(entities)
    pool = await connect_pool(owner_dsn, max_size=1)
    try:
        applied = await migrate(pool, schema, (PROJECTOR_SQL, GATEWAY_SQL)) if apply_migrations else []
        async with pg_errors(f"provision roles on {schema}"), pool.acquire() as connection:
            for role in kinds.values():
                await _ensure_role(connection, role, passwords[role])
            tables = {
                r["tablename"]
                for r in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
            }
            async with connection.transaction():
                granted = await _grant_policy(connection, schema, kinds, policy, tables)
    finally:
        await pool.close()
    known = {table for tables_of in policy.values() for table in tables_of}
    return RolesReport(schema, kinds, granted, sorted(tables - known), applied)


async def _grant_policy(
    connection: Any,
    schema: str,
    kinds: dict[str, str],
    policy: dict[str, dict[str, tuple[str, ...]]],
    tables: set[str],
) -> dict[str, dict[str, list[str]]]:
    """Revoke every privilege of the roles on `schema`, then grant the policy; role → table → privileges."""
    schema_ident = quote_ident(schema)
    everyone = ", ".join(quote_ident(role) for role in kinds.values())
    await connection.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema_ident} FROM {everyone}")
    await connection.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema_ident} FROM {everyone}")
    await connection.execute(f"REVOKE ALL ON SCHEMA {schema_ident} FROM {everyone}")
    await connection.execute(f"GRANT USAGE ON SCHEMA {schema_ident} TO {everyone}")
    granted: dict[str, dict[str, list[str]]] = {role: {} for role in kinds.values()}
    for kind, role in kinds.items():
        for table, privileges in sorted(policy[kind].items()):
            if table not in tables:
                continue
            target = f"{schema_ident}.{quote_ident(table)}"
            columns = ""
            hidden = _SECRET_COLUMNS.get(table, ()) if kind != "gateway" else ()
            if hidden:
                # Column privileges: the role reads the table but can never select the secret columns.
                visible = [c for c in await _columns(connection, schema, table) if c not in hidden]
                columns = f" ({', '.join(quote_ident(c) for c in visible)})"
            await connection.execute(f"GRANT {', '.join(privileges)}{columns} ON {target} TO {quote_ident(role)}")
            granted[role][table] = list(privileges)
    for (table, column), users in _SERIALS.items():
        if table not in tables:
            continue
        sequence = await connection.fetchval(
            "SELECT pg_get_serial_sequence($1, $2)", f"{schema_ident}.{quote_ident(table)}", column
        )
        for kind in users:
            await connection.execute(f"GRANT USAGE ON SEQUENCE {sequence} TO {quote_ident(kinds[kind])}")
    return granted


async def _columns(connection: Any, schema: str, table: str) -> list[str]:
    rows = await connection.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = ($1 || '.' || $2)::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        quote_ident(schema),
        quote_ident(table),
    )
    return [str(r["attname"]) for r in rows]
