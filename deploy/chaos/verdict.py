"""The checker's verdict on a chaos run: evidence from the log, the projection and devices, judged once.

Gathers what `deploy/verification/` needs — the projection's dedup table, change feed and digests, every
record of the change topics decoded as the projector decodes them, a clean single-process replay of those
records, and whatever devices hold — and runs `check`. Digests are compared in every version some device
stores plus each entity's current version, so the projection is compared with the replay even where no
device looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consumers.projector import migration_registry
from deploy.verification.checker import AckedOp, CheckReport, DeviceDigest, Evidence, check
from deploy.verification.evidence import (
    DeviceEvidence,
    LogRead,
    ProjectionRead,
    projection_digests,
    read_log,
    read_projection,
)
from deploy.verification.replay import Replay, digests_in_versions, replay
from keel.settings import Settings
from projections.pg_adapter import Pool
from schemas.catalog import default_catalog
from schemas.registry import SchemaRegistry

__all__ = ["Verdict", "judge"]


@dataclass(frozen=True)
class Verdict:
    """The checker's report and the evidence it judged."""

    report: CheckReport
    projection: ProjectionRead
    log: LogRead
    replay: Replay

    @property
    def log_records(self) -> int:
        """Records read from the change topics (copies and undecodable ones included)."""
        return len(self.log.entries) + self.log.undecodable


async def judge(
    settings: Settings,
    pool: Pool,
    registry: SchemaRegistry,
    *,
    acknowledged: Sequence[AckedOp] = (),
    devices: Sequence[DeviceEvidence] = (),
    timeout_s: float = 600.0,
) -> Verdict:
    """Read the run's log and projection, replay the log, and check (`acknowledged` adds ops acked by the log)."""
    catalog = default_catalog()
    migrations = migration_registry(settings, catalog)
    device_digests: list[DeviceDigest] = [digest for d in devices for digest in d.digests]
    versions: dict[str, set[int]] = {entity: {catalog.current_version(entity)} for entity in catalog.entities()}
    for digest in device_digests:
        versions[digest.entity_type].add(digest.version)
    projection = await read_projection(pool, settings.pg_schema)
    projected = await projection_digests(pool, settings.pg_schema, versions, migrations, catalog)
    log = await read_log(settings, registry, migrations, catalog=catalog, timeout_s=timeout_s)
    clean = replay(log.events)
    replayed = digests_in_versions({e: clean.visible_rows(e) for e in versions}, versions, migrations, catalog)
    consumed = {d.device_id: d.quarantined for d in devices}
    for device_id, seqs in projection.consumed_without_event.items():
        consumed[device_id] = consumed.get(device_id, frozenset()) | seqs
    report = check(
        Evidence(
            acknowledged=[*acknowledged, *(op for d in devices for op in d.acknowledged)],
            applied=projection.applied,
            consumed_without_event=consumed,
            feed_event_ids=projection.feed_event_ids,
            log=log.entries,
            device_digests=device_digests,
            projection_digests=projected,
            replay_digests=replayed,
        )
    )
    return Verdict(report, projection, log, clean)
