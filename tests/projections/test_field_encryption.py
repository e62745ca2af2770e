"""Sensitive payload fields encrypted in the projection tables: ciphertext at rest, plaintext to every reader,
digests over plaintext, values bound to their place, keys rotated lazily or by re-encryption."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keel.errors import ConfigurationError, IntegrityError
from keel.settings import Settings
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.field_encryption import FieldCipher, FieldKeyring
from projections.field_keys_pg_adapter import PgFieldKeys
from projections.outbox_pg_adapter import PgOutbox
from projections.pg_adapter import Pool, connect_pool
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import in_schema
from projections.sql_migrator_adapter import migrate
from projections.store import InMemoryProjectionStore
from schemas.catalog import default_catalog
from schemas.envelope import ChangeEvent
from tests.consumers.helpers import EventFactory
from tests.projections.fixtures import feed_settled

TOPIC = "k.comment.changes"


def cipher(**keys: bytes) -> FieldCipher:
    return FieldCipher.for_catalog(FieldKeyring(keys, list(keys)[-1]))


K1, K2 = FieldKeyring.new_key(), FieldKeyring.new_key()


def test_the_catalog_marks_comment_body_sensitive_and_only_strings_may_be() -> None:
    assert default_catalog().sensitive_fields("comment") == {"body"}
    assert default_catalog().sensitive_fields("task") == frozenset()


def test_a_value_is_bound_to_its_place_and_to_a_key_in_the_ring() -> None:
    sealed = cipher(k1=K1).seal("Salary: 123456", "acme|comment|c-1|body")
    assert sealed.startswith("enc:v1:k1:")
    assert "123456" not in sealed
    assert cipher(k1=K1).open(sealed, "acme|comment|c-1|body") == "Salary: 123456"
    assert cipher(k1=K1, k2=K2).open(sealed, "acme|comment|c-1|body") == "Salary: 123456", "old keys keep opening"
    with pytest.raises(IntegrityError, match="altered or moved"):
        cipher(k1=K1).open(sealed, "acme|comment|c-2|body")
    with pytest.raises(ConfigurationError, match="'k1' is not in the keyring"):
        cipher(k2=K2).open(sealed, "acme|comment|c-1|body")
    assert cipher(k1=K1).open("written before encryption", "acme|comment|c-1|body") == "written before encryption"
    with pytest.raises(ConfigurationError, match="not in the keyring"):
        FieldKeyring({"k1": K1}, "k2")


def test_a_keyring_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "fields.json"
    FieldKeyring.write(path, {"k1": K1, "k2": K2}, "k2")
    assert FieldKeyring.from_file(path) == FieldKeyring({"k1": K1, "k2": K2}, "k2")
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("{}")
    with pytest.raises(ConfigurationError, match="not a usable field keyring"):
        FieldKeyring.from_file(path)


def comments() -> list[ChangeEvent]:
    factory = EventFactory(tenant_id="acme")
    return [
        factory.event("phone", "c-1", entity_type="comment", version=1, task_id="t-1", body="Salary of Jane: 123456"),
        factory.event("laptop", "c-2", entity_type="comment", version=1, task_id="t-1", body="Diagnosis: flu"),
        # Concurrent edits of one body: a decision records both values.
        factory.event("phone", "c-2", entity_type="comment", version=1, base_ms=0, body="Diagnosis: cold"),
    ]


def batch(events: list[ChangeEvent], start: int, expected: int | None) -> ProjectionBatch:
    sourced = tuple(SourcedEvent(e, SourcePosition(TOPIC, 0, start + i), 1) for i, e in enumerate(events))
    return ProjectionBatch("g", (OffsetAdvance(TopicPartition(TOPIC, 0), expected, start + len(events)),), sourced)


@pytest.fixture
async def pool(keel_settings: Settings) -> AsyncIterator[Pool]:
    created = await connect_pool(keel_settings.database_url, max_size=2)
    try:
        await migrate(created, keel_settings.pg_schema)
        yield created
    finally:
        await created.close()


async def raw(pool: Pool, schema: str, sql: str) -> list[object]:
    async with pool.acquire() as connection:
        return [tuple(row.values()) for row in await connection.fetch(in_schema(sql, schema))]


@pytest.mark.integration
async def test_sensitive_values_are_ciphertext_at_rest_and_plaintext_to_readers(
    keel_settings: Settings, pool: Pool
) -> None:
    schema = keel_settings.pg_schema
    store = PgProjectionStore(pool, schema, cipher=cipher(k1=K1))
    events = comments()
    assert (await store.apply_batch(batch(events, 0, None))).committed
    at_rest = str(
        await raw(pool, schema, "SELECT body, state::text FROM {schema}.comment")
        + await raw(pool, schema, "SELECT body::text FROM {schema}.outbox")
        + await raw(pool, schema, "SELECT winner_value::text, loser_value::text FROM {schema}.conflict_decisions")
    )
    for secret in ("123456", "Jane", "Diagnosis", "flu", "cold"):
        assert secret not in at_rest
    assert at_rest.count("enc:v1:k1:") >= 8
    plain = InMemoryProjectionStore()
    assert (await plain.apply_batch(batch(events, 0, None))).committed
    assert await store.visible_rows("comment", "acme") == await plain.visible_rows("comment", "acme")
    assert await store.entity_state("comment", "acme", "c-2") == await plain.entity_state("comment", "acme", "c-2")
    [decision] = await store.decisions(tenant_id="acme")
    assert {decision.decision.winner_value, decision.decision.loser_value} == {"Diagnosis: flu", "Diagnosis: cold"}
    await feed_settled(pool, schema)
    page = await PgOutbox(pool, schema, cipher=cipher(k1=K1)).read("acme", "reader", None)
    assert [item.entry.body["payload"]["body"] for item in page.entries if item.entry.body.get("payload")] == [
        "Salary of Jane: 123456",
        "Diagnosis: flu",
        "Diagnosis: cold",
    ]


@pytest.mark.integration
async def test_rotation_is_lazy_on_writes_and_complete_after_reencrypt(keel_settings: Settings, pool: Pool) -> None:
    schema = keel_settings.pg_schema
    events = comments()
    assert (
        await PgProjectionStore(pool, schema, cipher=cipher(k1=K1)).apply_batch(batch(events[:2], 0, None))
    ).committed
    rotated = cipher(k1=K1, k2=K2)
    keys = PgFieldKeys(pool, schema, rotated)
    assert {t: dict(c) for t, c in (await keys.usage()).items()} == {"comment": {"k1": 2}}
    store = PgProjectionStore(pool, schema, cipher=rotated)
    before = await store.visible_rows("comment")
    assert (await store.apply_batch(batch(events[2:], 2, 2))).committed  # c-2 written again: sealed with k2
    assert {t: dict(c) for t, c in (await keys.usage()).items()} == {"comment": {"k1": 1, "k2": 1}}
    assert await keys.reencrypt() >= 1
    assert {t: dict(c) for t, c in (await keys.usage()).items()} == {"comment": {"k2": 2}}
    outbox = str(await raw(pool, schema, "SELECT body::text FROM {schema}.outbox"))
    assert "enc:v1:k1:" not in outbox
    only_k2 = PgProjectionStore(pool, schema, cipher=cipher(k2=K2))  # k1 may now leave the keyring
    after = await only_k2.visible_rows("comment")
    assert [row for row in after if row[1] == "c-1"] == [row for row in before if row[1] == "c-1"]
    assert await only_k2.entity_state("comment", "acme", "c-1") is not None
