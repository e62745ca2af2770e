"""Versioned SQL migrations: files `NNN_name.sql` from several directories, applied in version order.

Each package owns a range (projector 0NN in `projections/sql/`, gateway 1NN, security 2NN) and writes
`{schema}` where the PostgreSQL schema name goes. This module is pure: it finds, checks and renders the
files; `projections/sql_migrator_adapter.py` applies them and records them in `{schema}.schema_migrations`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from keel.errors import ConfigurationError

__all__ = ["PROJECTOR_SQL", "SqlMigration", "discover", "in_schema", "pending", "quote_ident"]

PROJECTOR_SQL = Path(__file__).parent / "sql"
_FILE = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier; ConfigurationError unless it is a plain lower-case name."""
    if not _IDENTIFIER.match(name):
        raise ConfigurationError(f"{name!r} is not a usable PostgreSQL name (lower-case letters, digits, _; max 63)")
    return f'"{name}"'


def in_schema(sql: str, schema: str) -> str:
    """`sql` with each `{schema}` replaced by the quoted schema name: the one way identifiers enter SQL text."""
    return sql.replace("{schema}", quote_ident(schema))


@dataclass(frozen=True)
class SqlMigration:
    """One migration file."""

    version: int
    name: str
    path: Path

    @cached_property
    def text(self) -> str:
        """The file's SQL with the `{schema}` placeholder."""
        return self.path.read_text()

    @cached_property
    def checksum(self) -> str:
        """sha256 of the file: an applied migration must never change."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, schema: str) -> str:
        """The SQL for one schema (only `{schema}` is replaced, so SQL's own braces stay as they are)."""
        return in_schema(self.text, schema)


def discover(directories: Iterable[Path]) -> list[SqlMigration]:
    """Every migration in `directories`, ordered by version; ConfigurationError on bad names or clashes."""
    found: dict[int, SqlMigration] = {}
    for directory in directories:
        if not directory.is_dir():
            raise ConfigurationError(f"{directory}: migration directory not found")
        for path in sorted(directory.glob("*.sql")):
            match = _FILE.match(path.name)
            if match is None:
                raise ConfigurationError(f"{path}: migration files are named NNN_lower_case_name.sql")
            migration = SqlMigration(int(match["version"]), match["name"], path)
            clash = found.get(migration.version)
            if clash is not None:
                raise ConfigurationError(f"{path} and {clash.path} share version {migration.version:03d}")
            found[migration.version] = migration
    return [found[version] for version in sorted(found)]


def pending(migrations: Iterable[SqlMigration], applied: Mapping[int, str]) -> list[SqlMigration]:
    """Migrations not applied yet; ConfigurationError if an applied file was edited afterwards.

    Applied versions without a file here belong to another package's directory and are left alone.
    """
    todo = []
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is None:
            todo.append(migration)
        elif recorded != migration.checksum:
            raise ConfigurationError(
                f"{migration.path.name} was changed after it was applied (checksum differs); "
                "write a new migration instead of editing an applied one"
            )
    return todo
