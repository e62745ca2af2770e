"""The device directory in PostgreSQL (`{schema}.devices`, producers/gateway/sql/101_devices.sql)."""

from __future__ import annotations

import hmac
import uuid

from keel.errors import AuthError, ValidationError
from producers.gateway.devices import DeviceRecord, new_secret, secret_digest
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import quote_ident

__all__ = ["PgDeviceDirectory"]

_NO_DEVICE_DIGEST = secret_digest(new_secret())  # compared against for unknown devices: constant-time either way
# `{schema}` is replaced by the quoted schema name, as in the SQL migration files.
_SQL = {
    "enroll": "INSERT INTO {schema}.devices (device_id, tenant_id, secret_sha256, label) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (device_id) DO NOTHING RETURNING device_id",
    "credentials": "SELECT tenant_id, secret_sha256, label, versions FROM {schema}.devices WHERE device_id = $1",
    "handshake": "UPDATE {schema}.devices SET versions = $2, last_handshake_at = now() WHERE device_id = $1",
    "get": "SELECT tenant_id, label, versions FROM {schema}.devices WHERE device_id = $1",
}


class PgDeviceDirectory:
    """`DeviceDirectory` on a pool; every driver error leaves as ServiceUnavailableError or TransientError."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self._pool = pool
        self._sql = {name: text.replace("{schema}", quote_ident(schema)) for name, text in _SQL.items()}

    async def enroll(self, tenant_id: str, device_id: str | None, label: str = "") -> tuple[DeviceRecord, str]:
        """Register a device; ValidationError if the id is taken."""
        chosen = device_id or str(uuid.uuid4())
        secret = new_secret()
        async with pg_errors("enroll device"), self._pool.acquire() as connection:
            inserted = await connection.fetchval(
                self._sql["enroll"],
                chosen,
                tenant_id,
                secret_digest(secret),
                label,
            )
        if inserted is None:
            raise ValidationError(f"device {chosen} is already enrolled", field="device_id")
        return DeviceRecord(tenant_id, chosen, label), secret

    async def authenticate(self, tenant_id: str, device_id: str, secret: str) -> DeviceRecord:
        """The device if its secret matches; AuthError otherwise."""
        async with pg_errors("authenticate device"), self._pool.acquire() as connection:
            row = await connection.fetchrow(self._sql["credentials"], device_id)
        stored = bytes(row["secret_sha256"]) if row is not None else _NO_DEVICE_DIGEST
        matches = hmac.compare_digest(stored, secret_digest(secret))
        if row is None or not matches or row["tenant_id"] != tenant_id:
            raise AuthError("unknown device or wrong secret")
        return DeviceRecord(tenant_id, device_id, row["label"], dict(row["versions"] or {}))

    async def record_handshake(self, device_id: str, versions: dict[str, int]) -> None:
        """Remember agreed versions and the handshake time."""
        async with pg_errors("record handshake"), self._pool.acquire() as connection:
            await connection.execute(
                self._sql["handshake"],
                device_id,
                versions,
            )

    async def get(self, device_id: str) -> DeviceRecord | None:
        """One device."""
        async with pg_errors("read device"), self._pool.acquire() as connection:
            row = await connection.fetchrow(self._sql["get"], device_id)
        if row is None:
            return None
        return DeviceRecord(row["tenant_id"], device_id, row["label"], dict(row["versions"] or {}))
