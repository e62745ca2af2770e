"""The evidence collectors on the real services feed the checker: a clean run passes, tampering is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.projector import migration_registry
from deploy.verification.checker import Evidence, FindingKind, check
from deploy.verification.evidence import device_evidence, projection_digests, read_log, read_projection
from deploy.verification.replay import digests_in_versions, replay
from projections.sql_migrations import in_schema
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.producers.live import LiveKeel, live_keel, settle
from tests.support.services import Services

pytestmark = pytest.mark.integration

VERSIONS = {"task": {1, 2, 3}, "project": {1}, "comment": {1}}


async def gather(keel: LiveKeel, registry: ConfluentSchemaRegistry) -> Evidence:
    devices = [device_evidence(d) for d in keel.devices]
    schema = keel.settings.pg_schema
    migrations = migration_registry(keel.settings)
    projection = await read_projection(keel.pool, schema)
    log = await read_log(keel.settings, registry, migrations, timeout_s=60)
    clean = replay(log.events)
    return Evidence(
        acknowledged=[op for d in devices for op in d.acknowledged],
        applied=projection.applied,
        consumed_without_event={d.device_id: d.quarantined for d in devices},
        feed_event_ids=projection.feed_event_ids,
        log=log.entries,
        device_digests=[x for d in devices for x in d.digests],
        projection_digests=await projection_digests(keel.pool, schema, VERSIONS, migrations),
        replay_digests=digests_in_versions({e: clean.visible_rows(e) for e in VERSIONS}, VERSIONS, migrations),
    )


async def test_evidence_from_a_real_run_passes_and_a_deleted_op_and_an_edited_row_are_caught(
    services: Services, tmp_path: Path
) -> None:
    async with live_keel(services) as keel:
        current = await keel.device(tmp_path / "current.db")
        legacy = await keel.device(tmp_path / "legacy.db", versions={"task": [1], "project": [1], "comment": [1]})
        for n in range(4):
            current.upsert("task", f"t-{n % 2}", {"title": f"current {n}", "priority": n % 4})
            legacy.upsert("task", f"t-{n % 2}", {"title": f"legacy {n}", "notes": "from the old app"})
        current.upsert("comment", "c-1", {"task_id": "t-0", "body": "+1", "author": "current"})
        legacy.delete("task", "t-1")
        await current.sync()
        await legacy.sync()
        await keel.assert_exactly_once([current, legacy])
        await settle([current, legacy])
        registry = ConfluentSchemaRegistry(keel.settings.registry_url)
        try:
            evidence = await gather(keel, registry)
            report = check(evidence)
            assert report.ok, report.summary()
            assert (report.acknowledged, report.applied, report.log_records) == (10, 10, 10)
            assert {d.version for d in evidence.device_digests if d.entity_type == "task"} == {1, 2}

            # Tamper with the projection: an op's dedup row disappears, a row's title changes behind the merge.
            schema = keel.settings.pg_schema
            await keel.pool.execute(
                in_schema("DELETE FROM {schema}.applied_ops WHERE device_id = $1 AND device_seq = 3", schema),
                current.device_id,
            )
            await keel.pool.execute(
                in_schema("UPDATE {schema}.task SET title = 'edited behind the merge' WHERE entity_id = 't-0'", schema)
            )
            tampered = check(await gather(keel, registry))
        finally:
            await registry.close()
    lost = tampered.of(FindingKind.LOST)
    assert [(f.subject, f.detail.endswith("it is in the log, unprojected")) for f in lost] == [
        (current.device_id, True)
    ]
    diverged = {f.subject for f in tampered.of(FindingKind.DIVERGED)}
    assert {current.device_id, legacy.device_id} <= diverged
    assert any(s.startswith("tenant ") for s in diverged), "the projection no longer equals the clean replay"
