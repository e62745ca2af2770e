"""Device keys in PostgreSQL (`{schema}.device_keys`, projections/sql/201_device_keys.sql)."""

from __future__ import annotations

from keel.errors import ValidationError
from projections.device_keys import DeviceKey
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import in_schema

__all__ = ["PgDeviceKeyRegistry"]

_SQL = {
    # One statement, so two registrations racing cannot both pass the "after every existing key" check:
    # the insert happens only when no key at or after from_seq exists, else nothing is inserted.
    "register": "INSERT INTO {schema}.device_keys (device_id, from_seq, tenant_id, public_key) "
    "SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM {schema}.device_keys WHERE device_id = $1 "
    "AND from_seq >= $2) ON CONFLICT DO NOTHING RETURNING from_seq",
    "same": "SELECT 1 FROM {schema}.device_keys WHERE device_id = $1 AND from_seq = $2 AND tenant_id = $3 "
    "AND public_key = $4",
    "newest": "SELECT max(from_seq) FROM {schema}.device_keys WHERE device_id = $1",
    "keys": "SELECT tenant_id, public_key, from_seq FROM {schema}.device_keys WHERE device_id = $1 ORDER BY from_seq",
}


class PgDeviceKeyRegistry:
    """`DeviceKeyRegistry` on a pool."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self._pool = pool
        self._sql = {name: in_schema(text, schema) for name, text in _SQL.items()}

    async def register(self, key: DeviceKey) -> None:
        """Add a key (idempotent for the same key; ValidationError if a key at or after from_seq exists)."""
        async with pg_errors("register device key"), self._pool.acquire() as connection:
            args = (key.device_id, key.from_seq, key.tenant_id, key.public_key)
            if await connection.fetchval(self._sql["register"], *args) is not None:
                return
            if await connection.fetchval(self._sql["same"], *args) is not None:
                return
            newest = await connection.fetchval(self._sql["newest"], key.device_id)
        raise ValidationError(
            f"device {key.device_id} already has a key from seq {newest}; a new key must start after it",
            field="public_key",
        )

    async def keys_of(self, device_id: str) -> list[DeviceKey]:
        """A device's keys, by from_seq."""
        async with pg_errors("read device keys"), self._pool.acquire() as connection:
            rows = await connection.fetch(self._sql["keys"], device_id)
        return [DeviceKey(row["tenant_id"], device_id, bytes(row["public_key"]), int(row["from_seq"])) for row in rows]
