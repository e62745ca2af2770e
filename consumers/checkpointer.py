"""Periodic signed checkpoints, written by the projector (docs/security.md, "Checkpoints").

With `KEEL_AUDIT_CHECKPOINT_KEY_FILE` set and `KEEL_AUDIT_CHECKPOINT_INTERVAL_S` > 0, the projector signs a
checkpoint of every tenant each interval (`projections/checkpoints.py`); `keel audit checkpoint` writes
one on demand. An outage only postpones a checkpoint: the next interval tries again.
"""

from __future__ import annotations

import asyncio
import contextlib

from keel.errors import TransientError
from keel.logging import get_logger
from keel.settings import Settings
from projections.checkpoints import CheckpointKey
from projections.checkpoints_pg_adapter import PgCheckpoints
from projections.pg_adapter import Pool
from schemas.catalog import Catalog, default_catalog

__all__ = ["periodic_checkpoints", "write_checkpoints_every"]

_log = get_logger("checkpointer")


async def write_checkpoints_every(
    interval_s: float, key: CheckpointKey, checkpoints: PgCheckpoints, group_id: str, stop: asyncio.Event
) -> None:
    """Write every tenant's checkpoint each `interval_s` seconds until `stop` is set."""
    while not stop.is_set():
        # Not `asyncio.wait_for`: on 3.11 it swallows a cancel arriving as `stop` is set (CPython gh-86296).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await stop.wait()
        if stop.is_set():
            return
        try:
            written = await checkpoints.write_all(key, group_id)
        except TransientError as error:
            _log.warning("checkpoint postponed", error=str(error))
            continue
        _log.info("checkpoints written", tenants=[c.body.tenant_id for c in written])


def periodic_checkpoints(
    settings: Settings, pool: Pool, stop: asyncio.Event, catalog: Catalog | None = None
) -> asyncio.Task[None] | None:
    """The checkpoint task when this deployment configured one, else None."""
    path = settings.audit_checkpoint_key_file
    if path is None or settings.audit_checkpoint_interval_s <= 0:
        return None
    key = CheckpointKey.from_pem_file(path)
    checkpoints = PgCheckpoints(pool, settings.pg_schema, (catalog or default_catalog()).entities())
    return asyncio.create_task(
        write_checkpoints_every(settings.audit_checkpoint_interval_s, key, checkpoints, settings.consumer_group, stop),
        name="projector-checkpoints",
    )
