"""Records injected straight into Kafka, past the gateway: the projector refuses forged ones with the reason
(dead letter), records the chain heads of signed devices, and `keel audit verify` finds dropped records,
forgeries in the log, rows edited in PostgreSQL and tampered checkpoints."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from consumers.audit import AuditReport, verify
from consumers.dead_letter import ERROR_CLASS, ERROR_MESSAGE
from consumers.projector import migration_registry
from keel.event_log import OutgoingRecord
from keel.kafka_adapter import AioKafkaLogWriter
from keel.settings import Settings
from projections.checkpoints import CheckpointKey
from projections.checkpoints_pg_adapter import PgCheckpoints
from projections.device_keys import DeviceKey
from projections.device_keys_pg_adapter import PgDeviceKeyRegistry
from projections.pg_adapter import Pool
from projections.sql_migrations import in_schema
from schemas.catalog import default_catalog
from schemas.envelope import ChangeEvent
from schemas.event_encoder import EventEncoder
from schemas.op_chain import CHAIN_SKIPPED_HEADER, OpLink, links_to_header
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.consumers.projector_rig import KEEL, projector_env, read_topic, running_projector, wait_applied
from tests.support.signed_device import SignedDevice, altered, flipped

pytestmark = pytest.mark.integration


async def inject(
    settings: Settings,
    registry: ConfluentSchemaRegistry,
    writer: AioKafkaLogWriter,
    *events: ChangeEvent,
    **headers: bytes,
) -> None:
    """Write events to their change topics as a producer with topic access could, bypassing the gateway."""
    encoder = EventEncoder(registry, settings.topic_for, auto_register=True)
    records = []
    for event in events:
        record = await encoder.record(event)
        records.append(OutgoingRecord(record.topic, record.key, record.value, (*record.headers, *headers.items())))
    await writer.write(records)


async def fetch(pool: Pool, settings: Settings, sql: str, *args: Any) -> list[Any]:
    async with pool.acquire() as connection:
        return list(await connection.fetch(in_schema(sql, settings.pg_schema), *args))


async def dead_letters(settings: Settings, expected: int) -> list[tuple[str, str]]:
    records = await read_topic(settings, settings.dlq_topic, expected)
    return [(dict(r.headers)[ERROR_CLASS].decode(), dict(r.headers)[ERROR_MESSAGE].decode()) for r in records]


async def audit(settings: Settings, pool: Pool, registry: ConfluentSchemaRegistry, **options: Any) -> AuditReport:
    return await verify(settings, pool, registry, migration_registry(settings), **options)


async def test_forged_records_are_dead_lettered_with_the_reason_and_the_chain_head_follows_the_device(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
) -> None:
    device = SignedDevice("signed-1")
    await PgDeviceKeyRegistry(pool, keel_settings.pg_schema).register(
        DeviceKey("acme", device.device_id, device.public_key)
    )
    genuine = [device.op(f"t-{n}", title=f"task {n}") for n in (1, 2, 3)]
    fourth = device.op("t-4", title="four")
    assert fourth.signature is not None
    stranger = SignedDevice("signed-1")
    forged_fork = device.op("t-2", seq=2, prev=genuine[0].hash, title="rewritten")
    device.head, device.seq = fourth.hash, 4
    broken = device.op("t-5", seq=5, prev=bytes(32), title="broken")
    async with running_projector(keel_settings):
        await inject(keel_settings, registry, log_writer, *genuine)
        await wait_applied(pool, keel_settings.pg_schema, 3)
        await inject(
            keel_settings,
            registry,
            log_writer,
            altered(fourth, title="altered after signing"),  # a byte flip in the payload
            replace(fourth, signature=flipped(fourth.signature, 3)),  # a byte flip in the signature
            device.event("t-4", 4, title="unsigned"),  # unsigned, claiming a signing device
            stranger.op("t-4", seq=4, prev=genuine[2].hash, title="someone else's key"),
            replace(fourth, device_seq=5),  # renumbered (reordered)
            forged_fork,  # a replayed seq with other content, validly signed
            genuine[1],  # the very same record again: a redelivery
            fourth,
        )
        await wait_applied(pool, keel_settings.pg_schema, 4)
        await dead_letters(keel_settings, 6)
        # Validly signed, chained after the wrong op (sent after seq 4 is in: the second of two links to
        # disagree is the one refused, and the partitions may interleave).
        await inject(keel_settings, registry, log_writer, broken)
        letters = await dead_letters(keel_settings, 7)
    reasons = [f"{kind}: {message}" for kind, message in letters]
    assert len(reasons) == 7, reasons
    for expected in (
        "IntegrityError: content does not match its hash: device signed-1 seq 4",
        "IntegrityError: bad signature: device signed-1 seq 4 is not signed by the device's registered key",
        "IntegrityError: unsigned op: device signed-1 has a registered key but seq 4 is not signed",
        "IntegrityError: content does not match its hash: device signed-1 seq 5",
        "SequenceError: device signed-1 seq 2 was already applied with another event id",
        "IntegrityError: broken chain: device signed-1 seq 5 follows 0000000000000000",
    ):
        assert any(reason.startswith(expected) for reason in reasons), (expected, reasons)
    assert sum(reason.startswith("IntegrityError: bad signature") for reason in reasons) == 2
    heads = await fetch(pool, keel_settings, "SELECT head_seq, head_hash FROM {schema}.chain_heads")
    assert [(r["head_seq"], bytes(r["head_hash"])) for r in heads] == [(4, fourth.hash)]
    titles = await fetch(pool, keel_settings, "SELECT entity_id, title FROM {schema}.task ORDER BY entity_id")
    assert [r["title"] for r in titles] == ["task 1", "task 2", "task 3", "four"]


async def test_audit_finds_dropped_records_forgeries_edited_rows_and_tampered_checkpoints(
    keel_settings: Settings,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    log_writer: AioKafkaLogWriter,
    change_topics: list[str],
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "checkpoint.pem"
    key = CheckpointKey.write_new(key_file)
    settings = keel_settings.model_copy(update={"audit_checkpoint_key_file": key_file})
    keys = PgDeviceKeyRegistry(pool, settings.pg_schema)
    devices = [SignedDevice("alice", "acme"), SignedDevice("bob", "acme"), SignedDevice("carol", "globex")]
    for device in devices:
        await keys.register(DeviceKey(device.tenant_id, device.device_id, device.public_key))
    alice, bob, carol = devices
    refused = alice.op("a-2", title="refused by the gateway")
    async with running_projector(settings):
        await inject(settings, registry, log_writer, alice.op("a-1", title="one"), bob.op("b-1", title="bob"))
        await inject(  # seq 2 was refused at the gateway: seq 3 carries its signed link
            settings,
            registry,
            log_writer,
            alice.op("a-3", title="three"),
            **{CHAIN_SKIPPED_HEADER: links_to_header([OpLink.of(refused)])},
        )
        await inject(settings, registry, log_writer, carol.op("c-1", title="carol"))
        await wait_applied(pool, settings.pg_schema, 4)
        checkpoints = PgCheckpoints(pool, settings.pg_schema, default_catalog().entities())
        written = await checkpoints.write_all(key, settings.consumer_group)
        assert sorted(c.body.tenant_id for c in written) == ["acme", "globex"]
        clean = await audit(settings, pool, registry, trusted_keys=[key.public_key])
        assert clean.findings == [], clean.findings
        assert (clean.checkpoints_verified, clean.devices_compared, clean.rows_compared) == (2, 3, 4)

        # A record dropped from the log (bob's seq 2 never arrives) and a forgery injected into it.
        bob.op("b-2", title="lost")
        await inject(settings, registry, log_writer, bob.op("b-3", title="after the hole"))
        await inject(settings, registry, log_writer, altered(alice.op("a-4", title="x"), title="forged"))
        await wait_applied(pool, settings.pg_schema, 5)
        await read_topic(settings, settings.dlq_topic, 1)
    # A row edited directly in PostgreSQL, and a checkpoint edited in place.
    async with pool.acquire() as connection:
        await connection.execute(
            in_schema("UPDATE {schema}.task SET title = 'hacked' WHERE entity_id = 'a-3'", settings.pg_schema)
        )
        await connection.execute(
            in_schema(
                "UPDATE {schema}.audit_checkpoints SET body = jsonb_set(body, '{created_at_ms}', '1') "
                "WHERE tenant_id = 'globex'",
                settings.pg_schema,
            )
        )
    report = await audit(settings, pool, registry, trusted_keys=[key.public_key], tenant_id="acme")
    found = {(f.kind, f.subject): f.message for f in report.findings}
    assert found[("projection", "task acme/a-3")].startswith("edited in PostgreSQL: title = 'hacked' (log: 'three')")
    assert (
        "seq 2 is missing from the log: the chain stops at seq 1 while seqs 3..3 are linked"
        in found[("chain", "device bob")]
    )
    [forgery] = [f for f in report.findings if f.kind == "log"]
    assert "content does not match its hash: device alice seq 4" in forgery.message
    assert len(report.findings) == 3, report.findings  # globex's checkpoint is not acme's business
    everyone = await audit(settings, pool, registry, trusted_keys=[key.public_key])
    assert any(f.kind == "checkpoint" and "bad signature" in f.message for f in everyone.findings), everyone.findings

    # The command line says the same: exit 1, naming the entity.
    env = projector_env(settings) | {"KEEL_AUDIT_CHECKPOINT_KEY_FILE": str(key_file), "KEEL_LOG_LEVEL": "WARNING"}
    command = [KEEL, "audit", "verify", "--tenant", "acme"]
    completed = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "task acme/a-3" in completed.stdout
    assert "3 findings" in completed.stdout
