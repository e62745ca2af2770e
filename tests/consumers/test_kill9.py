"""kill -9 of a projector subprocess at random points, many times: the result equals a clean run, exactly once."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from pathlib import Path

import pytest

from keel.kafka_adapter import AioKafkaLogWriter
from keel.settings import Settings
from projections.pg_adapter import Pool
from projections.pg_admin_adapter import PgAdmin
from schemas.envelope import ChangeEvent
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.consumers.helpers import EventFactory, encoder_for, expected_decision_ids, expected_digests, write_events
from tests.consumers.projector_rig import KEEL, count, end_offsets, projector_env, wait_applied, wait_caught_up

pytestmark = pytest.mark.integration


def start(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = projector_env(settings)
    # Static membership: the restarted process takes the partitions back at once (KIP-345).
    env.update(
        KEEL_CONSUMER_INSTANCE_ID=f"{settings.consumer_group}-member",
        KEEL_CONSUMER_SESSION_TIMEOUT_MS="6000",
        KEEL_PROJECTOR_BATCH_MAX_RECORDS="25",
    )
    with log.open("ab") as output:
        return subprocess.Popen([KEEL, "run", "projector"], env=env, stdout=output, stderr=output)


async def kill_nine_times(
    settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    writer: AioKafkaLogWriter,
    tmp_path: Path,
    *,
    kills: int,
    events: int,
) -> None:
    rng = random.Random(kills)
    factory = EventFactory(seed=kills)
    produced: list[ChangeEvent] = factory.random_task_events(events, devices=10, entities=events // 10)
    encoder = encoder_for(settings, registry)
    backlog, rest = produced[: events // 2], produced[events // 2 :]
    await write_events(writer, encoder, backlog)
    slices = [rest[i :: kills * 4] for i in range(kills * 4)]
    log = tmp_path / "projector.log"
    progress: list[tuple[int, int]] = []  # (applied, produced) at each kill
    written = len(backlog)
    for round_number in range(kills):
        process = start(settings, log)
        lifetime = rng.uniform(1.5, 4.5)
        for piece in slices[round_number * 4 : round_number * 4 + 4]:  # records keep arriving while it runs
            await asyncio.sleep(lifetime / 4)
            await write_events(writer, encoder, piece)
            written += len(piece)
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
        progress.append((await count(pool, settings.pg_schema, "SELECT count(*) FROM {schema}.applied_ops"), written))
    interrupted = sum(1 for applied, available in progress if 0 < applied < available)
    assert interrupted >= kills // 2, f"too few kills landed mid-stream: {progress}"
    final = start(settings, log)
    try:
        await wait_applied(pool, settings.pg_schema, len(produced), timeout_s=180)
        topics = [settings.topic_for("task")]
        await wait_caught_up(pool, settings, await end_offsets(settings, topics))
    finally:
        final.send_signal(signal.SIGTERM)
        code = final.wait(60)
    assert code == 0, log.read_text()[-3000:]

    schema = settings.pg_schema
    assert await count(pool, schema, "SELECT count(*) FROM {schema}.outbox WHERE kind = 'change'") == len(produced)
    assert await count(pool, schema, "SELECT count(DISTINCT event_id) FROM {schema}.outbox WHERE kind = 'change'") == (
        len(produced)
    )
    found = await PgAdmin(pool).digests(schema, ["task"])
    assert {d.tenant_id: (d.count, d.digest) for d in found} == expected_digests(produced)
    async with pool.acquire() as connection:
        decided = {
            r["decision_id"] for r in await connection.fetch(f'SELECT decision_id FROM "{schema}".conflict_decisions')
        }
    assert decided == expected_decision_ids(produced)
    print(f"\n{kills} kills ({interrupted} mid-stream); (applied, produced) at each kill: {progress}")


async def test_kill_minus_nine_at_random_points_leaves_exactly_a_clean_runs_state(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
    tmp_path: Path,
) -> None:
    await kill_nine_times(keel_settings, pool, registry, log_writer, tmp_path, kills=10, events=8_000)


@pytest.mark.long
async def test_kill_minus_nine_soak(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
    tmp_path: Path,
) -> None:
    await kill_nine_times(keel_settings, pool, registry, log_writer, tmp_path, kills=60, events=30_000)
