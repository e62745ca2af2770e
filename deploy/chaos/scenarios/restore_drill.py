"""The drill — the projection schema is destroyed and restored from a snapshot plus a replay of the log.

1. A projector applies the first part of the stream; a snapshot is taken with the code behind
   `keel projections snapshot` (`PgAdmin.snapshot`: entity tables, decisions, offsets and dedup rows in one
   consistent read, in a schema of their own).
2. More events are applied; the live digests are recorded; the projector stops.
3. Disaster: `DROP SCHEMA … CASCADE` of the live projection schema.
4. Restore: the schema is migrated afresh, the snapshot's rows copied in (`PgAdmin.restore_snapshot`, the
   first step of `keel projections rebuild --from-snapshot`), and the projector started again: it seeks to
   the snapshot's offsets and replays only what came after.

Checks: the restored digests equal those before the disaster and those of a clean replay of the whole
log; nothing lost or applied twice (the checker, on the restored schema); the replay after the snapshot
re-applied exactly the events the snapshot did not hold.
"""

from __future__ import annotations

import time

from consumers.projector import change_topics
from deploy.chaos.context import ChaosRun
from deploy.chaos.log_rig import open_log_rig
from deploy.chaos.probes import applied_count, wait_caught_up
from deploy.chaos.scenario import ScenarioOutcome, register
from projections.pg_admin_adapter import PgAdmin
from projections.sql_migrator_adapter import migrate
from schemas.catalog import default_catalog

__all__ = ["restore_drill"]


@register(
    "drill",
    "Snapshot, destroy, restore plus replay",
    "after the projection schema is dropped, a snapshot plus a replay of the log restores digests equal to "
    "those before the disaster and to a clean replay, nothing lost or applied twice",
    quick="10,000 events before the snapshot, 10,000 after",
    full="200,000 events before the snapshot, 200,000 after",
)
async def restore_drill(run: ChaosRun) -> ScenarioOutcome:
    """Run the drill (module docstring)."""
    rig = await open_log_rig(run)
    settings = rig.settings
    admin = PgAdmin(rig.pool)
    entities = list(default_catalog().entities())
    half = int(run.pick(10_000, 200_000))
    await rig.write_next(half)
    projector = run.projector("projector")
    await projector.start()
    if await wait_caught_up(rig.pool, settings, rig.topics, timeout_s=run.pick(180, 1_800)) is None:
        raise TimeoutError("the projector did not apply the first half")
    snapshot = await admin.snapshot(settings.pg_schema, "drill", settings.consumer_group, entities, rig.topics)
    in_snapshot = await applied_count(rig.pool, settings.pg_schema)
    await rig.write_next(half)
    if await wait_caught_up(rig.pool, settings, rig.topics, timeout_s=run.pick(180, 1_800)) is None:
        raise TimeoutError("the projector did not apply the second half")
    await projector.stop()
    before = {
        (d.entity_type, d.tenant_id): (d.count, d.digest) for d in await admin.digests(settings.pg_schema, entities)
    }

    # The disaster, then the restore.
    await admin.drop_schema(settings.pg_schema)
    began = time.monotonic()
    await migrate(rig.pool, settings.pg_schema)
    await admin.restore_snapshot(snapshot, settings.pg_schema, entities, change_topics(settings))
    restored_rows = await applied_count(rig.pool, settings.pg_schema)
    replayer = run.projector("projector-after-restore")
    await replayer.start()
    caught = await wait_caught_up(rig.pool, settings, rig.topics, timeout_s=run.pick(180, 1_800))
    restore_s = time.monotonic() - began
    await replayer.stop()
    after = {
        (d.entity_type, d.tenant_id): (d.count, d.digest) for d in await admin.digests(settings.pg_schema, entities)
    }
    verdict = await rig.verdict()
    report = verdict.report
    outcome = ScenarioOutcome.judged(report, len(rig.producer.acknowledged))
    outcome.diverged = outcome.diverged or after != before
    replayed = report.applied - restored_rows
    outcome.check("the snapshot held the first part", in_snapshot == restored_rows == half, f"{restored_rows} ops")
    outcome.check("the replay caught up", caught is not None, f"{caught or 0:.1f} s")
    outcome.check(
        "restored digests equal those before the disaster",
        after == before,
        f"{len(after)} (entity, tenant) digests, {sum(c for c, _ in after.values())} live entities",
    )
    outcome.check(
        "projection equals a clean replay of the log", not report.diverged, f"{report.digests_compared} digests"
    )
    outcome.check(
        "the replay re-applied exactly what the snapshot lacked",
        replayed == len(rig.producer.acknowledged) - half,
        f"{replayed} events after offsets {sum(snapshot.offsets.values())}",
    )
    outcome.figures.update(
        {
            "snapshot_events": restored_rows,
            "replayed_after_snapshot": replayed,
            "restore_s": round(restore_s, 1),
            "live_entities": sum(c for c, _ in after.values()),
        }
    )
    return outcome
