"""Rebuild into a shadow schema: digests equal the live ones, swaps continue where the replay stopped,
snapshots shorten the replay, and a bad migration is rolled back by disable → rebuild → swap."""

from __future__ import annotations

import pytest

from consumers.projector import migration_registry
from consumers.rebuild import rebuild
from keel.errors import ConfigurationError
from keel.kafka_adapter import AioKafkaLogWriter
from keel.settings import Settings
from projections.pg_adapter import Pool
from projections.pg_admin_adapter import PgAdmin
from schemas.domain_migrations import build_registry
from schemas.envelope import ChangeEvent, Op
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.consumers.helpers import EventFactory, encoder_for, expected_decision_ids, expected_digests, write_events
from tests.consumers.projector_rig import count, running_projector, wait_applied

pytestmark = pytest.mark.integration


def mixed_events(factory: EventFactory, count_: int) -> list[ChangeEvent]:
    events = factory.random_task_events(count_, devices=5, entities=60)
    events.append(factory.event("old-phone", "task-1", version=1, title="v1 title", notes="n", due="2025-09-01"))
    events.append(factory.event("old-tablet", "task-2", version=2, description="d", due="1/10/2025", priority=3))
    events.append(factory.event("dev-0", "task-3", op=Op.DELETE))
    events.append(factory.event("dev-1", "p-1", entity_type="project", version=1, name="Home", color="#00ff00"))
    return events


async def live_state(pool: Pool, settings: Settings) -> tuple[list[tuple[str, str, int, str]], set[str]]:
    digests = await PgAdmin(pool).digests(settings.pg_schema, ["task", "project", "comment"])
    async with pool.acquire() as connection:
        rows = await connection.fetch(f'SELECT decision_id FROM "{settings.pg_schema}".conflict_decisions')
    return [(d.entity_type, d.tenant_id, d.count, d.digest) for d in digests], {r["decision_id"] for r in rows}


async def test_rebuild_matches_live_and_the_swapped_tables_continue_where_the_replay_stopped(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
) -> None:
    factory = EventFactory(seed=41)
    first = mixed_events(factory, 1_200)
    encoder = encoder_for(keel_settings, registry)
    await write_events(log_writer, encoder, first)
    async with running_projector(keel_settings):
        await wait_applied(pool, keel_settings.pg_schema, len(first))
    before = await live_state(pool, keel_settings)

    report = await rebuild(keel_settings, pool, registry, migration_registry(keel_settings), swap=True)
    assert report.applied == len(first)
    assert report.comparisons
    assert report.matches, report.comparisons
    assert report.swapped
    assert report.archive_schema is not None
    assert await PgAdmin(pool).schema_exists(report.archive_schema)
    assert not await PgAdmin(pool).schema_exists(report.shadow_schema)
    assert await live_state(pool, keel_settings) == before
    resyncs = "SELECT count(*) FROM {schema}.outbox WHERE kind = 'resync'"
    assert await count(pool, keel_settings.pg_schema, resyncs) == 1  # one tenant, told to resync

    second = factory.random_task_events(300, devices=5, entities=60)
    await write_events(log_writer, encoder, second)
    async with running_projector(keel_settings):
        await wait_applied(pool, keel_settings.pg_schema, len(first) + len(second))
    digests, decisions = await live_state(pool, keel_settings)
    tasks = {tenant: (n, digest) for entity, tenant, n, digest in digests if entity == "task"}
    assert tasks == expected_digests([*first, *second])
    assert decisions == expected_decision_ids([*first, *second])


async def test_a_rebuild_from_a_snapshot_replays_only_what_came_after_it(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
) -> None:
    factory = EventFactory(seed=43)
    before, after = mixed_events(factory, 400), factory.random_task_events(250, devices=5, entities=60)
    encoder = encoder_for(keel_settings, registry)
    entities = ["task", "project", "comment"]
    topics = [keel_settings.topic_for(e) for e in entities]
    await write_events(log_writer, encoder, before)
    async with running_projector(keel_settings):
        await wait_applied(pool, keel_settings.pg_schema, len(before))
    snapshot = await PgAdmin(pool).snapshot(
        keel_settings.pg_schema, "nightly", keel_settings.consumer_group, entities, topics
    )
    assert sum(d.count for d in snapshot.digests) > 0
    assert sum(snapshot.offsets.values()) == len(before)
    await write_events(log_writer, encoder, after)
    async with running_projector(keel_settings):
        await wait_applied(pool, keel_settings.pg_schema, len(before) + len(after))
    report = await rebuild(keel_settings, pool, registry, migration_registry(keel_settings), from_snapshot="nightly")
    assert report.applied == len(after)
    assert report.matches, report.comparisons
    assert not report.swapped
    assert await PgAdmin(pool).schema_exists(report.shadow_schema)
    with pytest.raises(ConfigurationError, match="no snapshot named"):
        await rebuild(
            keel_settings,
            pool,
            registry,
            migration_registry(keel_settings),
            from_snapshot="missing",
            into=f"{keel_settings.pg_schema}_x",
        )


async def test_a_bad_migration_is_rolled_back_by_disabling_it_rebuilding_and_swapping(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
) -> None:
    factory = EventFactory(seed=47)
    events = [
        factory.event("dev-a", f"t{i}", title=f"t{i}", due_at=1_760_000_000_000 + i * 86_400_000) for i in range(20)
    ]
    await write_events(log_writer, encoder_for(keel_settings, registry), events)
    async with running_projector(keel_settings):
        await wait_applied(pool, keel_settings.pg_schema, len(events))
    without = build_registry(disabled=("normalize_task",))  # pretend normalize_task was the bad step
    refused = f"{keel_settings.pg_schema}_refused"
    with pytest.raises(ConfigurationError, match="--allow-diff"):
        await rebuild(keel_settings, pool, registry, without, entities=["task"], into=refused, swap=True)
    report = await rebuild(keel_settings, pool, registry, without, entities=["task"], swap=True, allow_diff=True)
    assert not report.matches
    assert [c.entity_type for c in report.comparisons if not c.is_equal] == ["task"]
    assert report.swapped
    async with pool.acquire() as connection:
        dues = await connection.fetch(f'SELECT due, due_at FROM "{keel_settings.pg_schema}".task')
    assert len(dues) == 20
    assert all(r["due"] is None and r["due_at"] is not None for r in dues)  # the step's effect is gone


async def test_a_swap_under_a_running_projector_loses_and_duplicates_nothing(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
) -> None:
    settings = keel_settings.model_copy(update={"projector_batch_max_records": 30})
    factory = EventFactory(seed=53)
    events = factory.random_task_events(1_500, devices=5, entities=80)
    encoder = encoder_for(settings, registry)
    await write_events(log_writer, encoder, events[:700])
    async with running_projector(settings):
        await wait_applied(pool, settings.pg_schema, 700)
        await write_events(log_writer, encoder, events[700:1_100])  # still being projected during the rebuild
        report = await rebuild(
            settings, pool, registry, migration_registry(settings), entities=["task"], swap=True, allow_diff=True
        )
        assert report.swapped
        await write_events(log_writer, encoder, events[1_100:])
        await wait_applied(pool, settings.pg_schema, len(events))
    distinct = "SELECT count(DISTINCT event_id) FROM {schema}.outbox WHERE kind = 'change'"
    assert await count(pool, settings.pg_schema, distinct) == len(events)
    digests, decisions = await live_state(pool, settings)
    assert {tenant: (n, digest) for entity, tenant, n, digest in digests if entity == "task"} == expected_digests(
        events
    )
    assert decisions == expected_decision_ids(events)
