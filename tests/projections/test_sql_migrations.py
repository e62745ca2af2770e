"""Versioned SQL migrations: discovery across directories, checksums, applying, and the derived columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.errors import ConfigurationError
from keel.settings import Settings
from projections.entity_tables import METADATA_COLUMNS, entity_tables
from projections.pg_adapter import Pool
from projections.sql_migrations import PROJECTOR_SQL, discover, in_schema, pending, quote_ident
from projections.sql_migrator_adapter import applied_versions, migrate


def test_files_from_several_directories_apply_in_version_order(tmp_path: Path) -> None:
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    (gateway / "101_devices.sql").write_text("CREATE TABLE {schema}.devices (id text);")
    found = discover([gateway, PROJECTOR_SQL])
    projector = [m.version for m in discover([PROJECTOR_SQL])]
    assert [m.version for m in found] == sorted([*projector, 101])
    assert projector[:4] == [1, 2, 3, 4], "projector files 0NN; security files 2NN (docs/architecture.md)"
    assert next(m for m in found if m.version == 101).render("abc") == 'CREATE TABLE "abc".devices (id text);'


def test_bad_names_clashes_and_edited_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "7_short.sql").write_text("")
    with pytest.raises(ConfigurationError, match="NNN_lower_case_name"):
        discover([tmp_path])
    (tmp_path / "7_short.sql").unlink()
    (tmp_path / "001_again.sql").write_text("")
    with pytest.raises(ConfigurationError, match="share version 001"):
        discover([tmp_path, PROJECTOR_SQL])
    first = discover([PROJECTOR_SQL])[0]
    with pytest.raises(ConfigurationError, match="changed after it was applied"):
        pending([first], {1: "not-the-checksum"})
    assert pending([first], {1: first.checksum, 900: "another package's"}) == []


def test_identifiers_are_quoted_or_refused() -> None:
    assert quote_ident("keel_1") == '"keel_1"'
    assert in_schema("SELECT 1 FROM {schema}.t WHERE x = '{}'", "k") == "SELECT 1 FROM \"k\".t WHERE x = '{}'"
    for bad in ('a"; DROP SCHEMA x; --', "Upper", "", "x" * 64):
        with pytest.raises(ConfigurationError):
            quote_ident(bad)


@pytest.mark.integration
async def test_migrate_records_each_file_once_and_columns_match_the_catalog(
    keel_settings: Settings, pool: Pool, tmp_path: Path
) -> None:
    schema = keel_settings.pg_schema
    recorded = await applied_versions(pool, schema)
    projector = [m.version for m in discover([PROJECTOR_SQL])]
    assert sorted(recorded) == projector
    assert await migrate(pool, schema) == []  # idempotent
    extra = tmp_path / "gateway"
    extra.mkdir()
    (extra / "150_heads.sql").write_text("CREATE TABLE {schema}.heads (device_id text PRIMARY KEY);")
    assert await migrate(pool, schema, [PROJECTOR_SQL, extra]) == ["150_heads.sql"]
    assert sorted(await applied_versions(pool, schema)) == sorted([*projector, 150])
    async with pool.acquire() as connection:
        for entity, table in entity_tables().items():
            rows = await connection.fetch(
                "SELECT column_name, data_type, udt_name FROM information_schema.columns "
                "WHERE table_schema = $1 AND table_name = $2",
                schema,
                entity,
            )
            actual = {r["column_name"]: _sql_type(r["data_type"], r["udt_name"]) for r in rows}
            derived = {c.name: c.sql_type for c in table.columns}
            assert {k: v for k, v in actual.items() if k not in METADATA_COLUMNS} == derived, entity
            assert set(METADATA_COLUMNS) <= set(actual)


def _sql_type(data_type: str, udt_name: str) -> str:
    if data_type == "ARRAY":
        return {"_text": "text[]"}[udt_name]
    return {"timestamp with time zone": "timestamptz"}.get(data_type, data_type)


async def test_migrate_refuses_an_unusable_schema_name() -> None:
    with pytest.raises(ConfigurationError):
        await migrate(None, "Bad-Name")  # type: ignore[arg-type] # refused before any connection is used
