"""The token signing keys in PostgreSQL (`{schema}.token_signing_keys`, sql/120_token_signing_keys.sql)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from producers.gateway.signing_keys import SigningKey
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import in_schema

__all__ = ["PgSigningKeyStore"]

_SQL = {
    "keys": "SELECT kid, private_pem, created_at, activates_at, retired_at, revoked_at "
    "FROM {schema}.token_signing_keys ORDER BY created_at, kid",
    "add": "INSERT INTO {schema}.token_signing_keys (kid, private_pem, public_jwk, created_at, activates_at, "
    "retired_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kid) DO NOTHING",
    "retire_others": "UPDATE {schema}.token_signing_keys SET retired_at = $2 WHERE kid <> $1 AND retired_at IS NULL",
    "revoke": "UPDATE {schema}.token_signing_keys SET revoked_at = coalesce(revoked_at, $2), "
    "retired_at = coalesce(retired_at, $2) WHERE kid = $1 RETURNING kid",
    "prune": "DELETE FROM {schema}.token_signing_keys WHERE coalesce(revoked_at, retired_at) < $1 RETURNING kid",
}


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _key(row: Any) -> SigningKey:
    return SigningKey(
        kid=row["kid"],
        private_pem=bytes(row["private_pem"]),
        created_at_ms=_ms(row["created_at"]) or 0,
        activates_at_ms=_ms(row["activates_at"]) or 0,
        retired_at_ms=_ms(row["retired_at"]),
        revoked_at_ms=_ms(row["revoked_at"]),
    )


class PgSigningKeyStore:
    """`SigningKeyStore` on a pool; driver errors leave as ServiceUnavailableError or TransientError."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self._pool = pool
        self._sql = {name: in_schema(text, schema) for name, text in _SQL.items()}

    async def keys(self) -> list[SigningKey]:
        """Every key, oldest first."""
        async with pg_errors("read signing keys"), self._pool.acquire() as connection:
            rows = await connection.fetch(self._sql["keys"])
        return [_key(row) for row in rows]

    async def _insert(self, connection: Any, key: SigningKey) -> None:
        await connection.execute(
            self._sql["add"],
            key.kid,
            key.private_pem,
            key.public_jwk(),
            _at(key.created_at_ms),
            _at(key.activates_at_ms),
            _at(key.retired_at_ms),
            _at(key.revoked_at_ms),
        )

    async def add(self, key: SigningKey) -> None:
        """Store a key (kept if the kid exists)."""
        async with pg_errors("add signing key"), self._pool.acquire() as connection:
            await self._insert(connection, key)

    async def rotate_to(self, key: SigningKey, now_ms: int) -> None:
        """Store `key` and retire the others, in one transaction."""
        async with pg_errors("rotate signing key"), self._pool.acquire() as connection, connection.transaction():
            await self._insert(connection, key)
            await connection.execute(self._sql["retire_others"], key.kid, _at(now_ms))

    async def revoke(self, kid: str, now_ms: int) -> bool:
        """Revoke a key."""
        async with pg_errors("revoke signing key"), self._pool.acquire() as connection:
            found = await connection.fetchval(self._sql["revoke"], kid, _at(now_ms))
        return found is not None

    async def prune(self, before_ms: int) -> list[str]:
        """Delete long-retired keys."""
        async with pg_errors("prune signing keys"), self._pool.acquire() as connection:
            rows = await connection.fetch(self._sql["prune"], _at(before_ms))
        return sorted(str(row["kid"]) for row in rows)
