"""Entity tables derived from the current catalog schema: typed columns and payload ⇄ row conversions.

The SQL migrations in `projections/sql/` create these tables by hand, version by version; a test checks
that after all migrations the columns equal what this module derives from the newest schema, so a new
schema version cannot ship without its migration. Payload form is what the merge and the digests use
(timestamps as epoch milliseconds, arrays as lists); row form is what asyncpg reads and writes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from keel.errors import ValidationError
from schemas.catalog import Catalog, EntitySchema, FieldSpec, default_catalog

__all__ = [
    "METADATA_COLUMNS",
    "Column",
    "EntityTable",
    "entity_table",
    "entity_tables",
    "raise_if_unprojectable",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Python's datetime spans years 1..9999; PostgreSQL's timestamptz is wider, so Python is the bound.
MIN_MS = (datetime(1, 1, 2, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
MAX_MS = (datetime(9999, 12, 30, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)

METADATA_COLUMNS = (
    "tenant_id",
    "entity_id",
    "deleted",
    "clock",
    "origin_device",
    "last_event_id",
    "state",
    "last_tx",
    "updated_at",
)

_PRIMITIVES = {
    "string": "text",
    "int": "integer",
    "long": "bigint",
    "boolean": "boolean",
    "double": "double precision",
    "float": "real",
    "bytes": "bytea",
}


class Row(Protocol):
    """Anything indexable by column name (a mapping, an asyncpg Record)."""

    def __getitem__(self, key: str, /) -> Any:
        """The value of a column."""
        ...


@dataclass(frozen=True)
class Column:
    """One typed column of an entity table."""

    name: str
    sql_type: str
    spec: FieldSpec

    @property
    def default(self) -> Any:
        """The payload default (what a never-written field reads as)."""
        return copy.deepcopy(self.spec.default) if self.spec.has_default else None

    def to_db(self, value: Any) -> Any:
        """Payload value → asyncpg parameter."""
        if value is None:
            return None
        if self.sql_type == "timestamptz":
            return EPOCH + timedelta(milliseconds=int(value))
        return value

    def from_db(self, value: Any) -> Any:
        """Asyncpg value → payload value."""
        if value is None:
            return None
        if self.sql_type == "timestamptz":
            return int((value - EPOCH) // timedelta(milliseconds=1))
        if self.sql_type == "text[]":
            return list(value)
        return value


def _sql_type(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        branches = [branch for branch in avro_type if branch != "null"]
        return _sql_type(branches[0]) if len(branches) == 1 else "jsonb"
    if isinstance(avro_type, str):
        return _PRIMITIVES.get(avro_type, "jsonb")
    kind, logical = avro_type.get("type"), avro_type.get("logicalType")
    if kind == "long" and logical in ("timestamp-millis", "local-timestamp-millis"):
        sql_type = "timestamptz"
    elif kind == "enum":
        sql_type = "text"
    elif kind == "array" and avro_type.get("items") == "string":
        sql_type = "text[]"
    else:
        sql_type = _PRIMITIVES.get(kind, "jsonb") if isinstance(kind, str) else "jsonb"
    return sql_type


@dataclass(frozen=True)
class EntityTable:
    """The table of one entity type at one schema version."""

    entity: str
    version: int
    columns: tuple[Column, ...]

    @property
    def name(self) -> str:
        """Table name: the entity type."""
        return self.entity

    @property
    def column_names(self) -> tuple[str, ...]:
        """Payload column names in schema order."""
        return tuple(column.name for column in self.columns)

    def defaults(self) -> dict[str, Any]:
        """Payload defaults of every field."""
        return {column.name: column.default for column in self.columns}

    def row_values(self, visible: Mapping[str, Any] | None) -> list[Any]:
        """Column values in `columns` order (all NULL for a deleted entity)."""
        if visible is None:
            return [None] * len(self.columns)
        return [column.to_db(visible.get(column.name)) for column in self.columns]

    def payload_from_row(self, row: Row) -> dict[str, Any]:
        """Visible payload values of a row, in payload form."""
        return {column.name: column.from_db(row[column.name]) for column in self.columns}


def entity_table(schema: EntitySchema) -> EntityTable:
    """The table layout of one schema version."""
    columns = tuple(Column(spec.name, _sql_type(spec.avro_type), spec) for spec in schema.fields)
    return EntityTable(schema.entity, schema.version, columns)


def entity_tables(catalog: Catalog | None = None) -> dict[str, EntityTable]:
    """The current table of every entity type (of the shipped catalog unless another is given)."""
    if catalog is None:
        return _shipped_tables()
    return {entity: entity_table(catalog.schema(entity)) for entity in catalog.entities()}


@lru_cache(maxsize=1)
def _shipped_tables() -> dict[str, EntityTable]:
    catalog = default_catalog()
    return {entity: entity_table(catalog.schema(entity)) for entity in catalog.entities()}


def _raise_if_unstorable(value: Any, where: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError(f"{where} contains a NUL character, which PostgreSQL text cannot store")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{where} is {value}, which JSON cannot store")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _raise_if_unstorable(key, where)
            _raise_if_unstorable(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _raise_if_unstorable(item, f"{where}[{index}]")


def raise_if_unprojectable(table: EntityTable, payload: Mapping[str, Any] | None, ids: Mapping[str, str]) -> None:
    """ValidationError for values that passed Avro validation but cannot be stored (NUL, timestamp range, NaN).

    Checked before the batch transaction, so one such event goes to the DLQ instead of failing its batch.
    """
    for name, text in ids.items():
        _raise_if_unstorable(text, name)
    if payload is None:
        return
    for column in table.columns:
        value = payload.get(column.name)
        _raise_if_unstorable(value, column.name)
        if column.sql_type == "timestamptz" and value is not None and not MIN_MS <= int(value) <= MAX_MS:
            raise ValidationError(f"{column.name}: {value} ms is outside the storable years 1..9999", field=column.name)
