"""The commands people use: `keel conflicts list | show | resolve`, `keel projections digest | rebuild`."""

from __future__ import annotations

import json
import subprocess

import pytest

from keel.kafka_adapter import AioKafkaLogWriter
from keel.settings import Settings
from projections.pg_adapter import Pool
from projections.pg_admin_adapter import PgAdmin
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.consumers.helpers import EventFactory, encoder_for, write_events
from tests.consumers.projector_rig import KEEL, projector_env, running_projector, wait_applied

pytestmark = pytest.mark.integration


def keel(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = projector_env(settings) | {"COLUMNS": "250"}  # rich wraps tables to the terminal width
    return subprocess.run([KEEL, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


async def test_a_conflict_reads_back_in_words_and_an_override_settles_it(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
) -> None:
    factory = EventFactory()
    phone = factory.event("phone", "t1", title="Buy milk", priority=1)
    laptop = factory.event("laptop", "t1", title="Buy oat milk", physical_ms=phone.hlc.physical_ms + 60_000)
    await write_events(log_writer, encoder_for(keel_settings, registry), [phone, laptop])
    async with running_projector(keel_settings):
        await wait_applied(pool, keel_settings.pg_schema, 2)

    listed = keel(keel_settings, "conflicts", "list", "--open")
    assert listed.returncode == 0, listed.stderr
    assert "last-writer-wins" in listed.stdout
    records = await PgAdminDecisions.ids(pool, keel_settings)
    (decision_id,) = records
    shown = keel(keel_settings, "conflicts", "show", decision_id[:10])
    assert shown.returncode == 0, shown.stderr
    assert "task t1 of tenant tenant-a: field 'title'" in shown.stdout
    assert 'Kept:      "Buy oat milk" from laptop' in shown.stdout
    assert 'Discarded: "Buy milk" from phone' in shown.stdout
    assert "Why: kept the later edit from laptop" in shown.stdout
    assert "Status: open" in shown.stdout

    resolved = keel(
        keel_settings,
        "conflicts",
        "resolve",
        decision_id,
        "--keep",
        "loser",
        "--reason",
        "milk it is",
        "--actor",
        "ana",
    )
    assert resolved.returncode == 0, resolved.stdout + resolved.stderr
    assert "device operator:ana, seq 1" in resolved.stdout
    async with running_projector(keel_settings):
        await wait_applied(pool, keel_settings.pg_schema, 3)
    async with pool.acquire() as connection:
        row = await connection.fetchrow(f'SELECT title, priority, origin_device FROM "{keel_settings.pg_schema}".task')
    assert (row["title"], row["priority"], row["origin_device"]) == ("Buy milk", 1, "operator:ana")
    settled = keel(keel_settings, "conflicts", "show", decision_id)
    assert "Status: settled by override" in settled.stdout
    assert keel(keel_settings, "conflicts", "show", "feedfacefeed").returncode == 2
    assert keel(keel_settings, "conflicts", "resolve", decision_id, "--reason", "x", "--actor", "a").returncode == 2

    digest = keel(keel_settings, "projections", "digest", "--entity", "task", "--json")
    assert digest.returncode == 0, digest.stderr
    expected = await PgAdmin(pool).digests(keel_settings.pg_schema, ["task"])
    assert json.loads(digest.stdout) == [d.__dict__ for d in expected]
    rebuilt = keel(
        keel_settings, "projections", "rebuild", "--entity", "task", "--into", f"{keel_settings.pg_schema}_c"
    )
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "digests match" in rebuilt.stdout


class PgAdminDecisions:
    @staticmethod
    async def ids(pool: Pool, settings: Settings) -> list[str]:
        async with pool.acquire() as connection:
            rows = await connection.fetch(f'SELECT decision_id FROM "{settings.pg_schema}".conflict_decisions')
        return [r["decision_id"] for r in rows]
