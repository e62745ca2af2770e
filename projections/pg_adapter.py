"""PostgreSQL through asyncpg: pools with JSON codecs, and driver errors translated into Keel's error tree.

Every other `*_adapter.py` of the projections talks to PostgreSQL through `connect_pool` and `pg_errors`, so
no asyncpg exception escapes: an unreachable or restarting server is `ServiceUnavailableError`, a deadlock
or serialization failure is `TransientError` (retry the batch), anything else is a bug and propagates.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool

from keel.errors import ServiceUnavailableError, TransientError

__all__ = ["Connection", "Pool", "connect_pool", "pg_errors"]

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

# SQLSTATE classes: 08 connection exception, 57 operator intervention (admin shutdown, terminate_backend,
# cannot connect now), 53 insufficient resources (too many connections).
_UNAVAILABLE_CLASSES = ("08", "57", "53")
# 40001 serialization_failure, 40P01 deadlock_detected: the transaction may simply be retried.
_RETRY_STATES = ("40001", "40P01")


async def _init_connection(connection: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await connection.set_type_codec(kind, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@asynccontextmanager
async def pg_errors(what: str) -> AsyncIterator[None]:
    """Translate asyncpg and socket errors raised inside the block."""
    try:
        yield
    except asyncpg.PostgresError as error:
        state = getattr(error, "sqlstate", "") or ""
        if state[:2] in _UNAVAILABLE_CLASSES:
            raise ServiceUnavailableError("postgresql", f"{what}: {error!r}") from error
        if state in _RETRY_STATES:
            raise TransientError(f"postgresql {what}: {error.__class__.__name__}: {error}") from error
        raise
    except (asyncpg.InterfaceError, asyncpg.InternalClientError) as error:
        # The connection was closed under us (server gone, proxy cut) or the pool is shutting down.
        raise ServiceUnavailableError("postgresql", f"{what}: {error!r}") from error
    except (OSError, TimeoutError) as error:
        raise ServiceUnavailableError("postgresql", f"{what}: {error!r}") from error


async def connect_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    command_timeout_s: float = 60.0,
    application_name: str = "keel",
) -> Pool:
    """A pool whose json/jsonb columns read and write Python values; ServiceUnavailableError if unreachable."""
    async with pg_errors("connect"):
        pool: Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            command_timeout=command_timeout_s,
            server_settings={"application_name": application_name[:63]},  # shows in pg_stat_activity
            # Plans are cached per connection; a swap (ALTER TABLE … SET SCHEMA) invalidates them server-side.
            max_inactive_connection_lifetime=60.0,
        )
    return pool
