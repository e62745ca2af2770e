"""The schema registry port: what Keel needs from any Confluent-API registry, and an in-memory fake.

Adapters: `schemas/registry_adapter.py` (confluent-kafka's client; Confluent SR, Apicurio, Karapace,
Redpanda). The fake passes the same contract tests (tests/schemas/test_registry_contract.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from keel.errors import ConfigurationError, IncompatibleSchemaError, UnknownSchemaError
from schemas.compatibility import check_compatibility, parse_avro

__all__ = ["CompatibilityReport", "InMemorySchemaRegistry", "RegisteredSchema", "SchemaRegistry"]


@dataclass(frozen=True)
class RegisteredSchema:
    """A schema as registered under a subject."""

    subject: str
    version: int
    schema_id: int
    schema: str


@dataclass(frozen=True)
class CompatibilityReport:
    """The registry's verdict on a candidate schema, with its messages when it gives any."""

    is_compatible: bool
    messages: list[str] = field(default_factory=list)


class SchemaRegistry(Protocol):
    """What Keel asks of a schema registry."""

    async def get_schema(self, schema_id: int) -> str:
        """Schema text by global id; UnknownSchemaError if absent, ServiceUnavailableError if unreachable."""
        ...

    async def register(self, subject: str, schema: str) -> int:
        """Register (or find) a schema under a subject; IncompatibleSchemaError if the level refuses it."""
        ...

    async def lookup(self, subject: str, schema: str) -> RegisteredSchema | None:
        """The registration of an equal schema under the subject, or None."""
        ...

    async def subjects(self) -> list[str]:
        """Every subject."""
        ...

    async def versions(self, subject: str) -> list[int]:
        """Versions of a subject (empty if it does not exist)."""
        ...

    async def get_version(self, subject: str, version: int | None = None) -> RegisteredSchema:
        """One version (latest when None); ConfigurationError if absent."""
        ...

    async def get_compatibility(self, subject: str | None = None) -> str | None:
        """The subject's own level (None if it has none), or the global level when subject is None."""
        ...

    async def set_compatibility(self, level: str, subject: str | None = None) -> None:
        """Set a subject's level, or the global one when subject is None."""
        ...

    async def test_compatibility(self, subject: str, schema: str) -> CompatibilityReport:
        """Whether registering `schema` under `subject` would be accepted."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _normal(schema: str) -> object:
    return json.loads(schema)


class InMemorySchemaRegistry:
    """A registry in a dict, applying compatibility levels with the same Avro rules."""

    def __init__(self, global_level: str = "BACKWARD") -> None:
        self._by_id: dict[int, str] = {}
        self._subjects: dict[str, list[RegisteredSchema]] = {}
        self._levels: dict[str, str] = {}
        self._global = global_level
        self.available = True

    def _raise_if_down(self) -> None:
        if not self.available:
            from keel.errors import ServiceUnavailableError

            raise ServiceUnavailableError("schema registry", "fake registry switched off")

    async def get_schema(self, schema_id: int) -> str:
        """Schema text by id."""
        self._raise_if_down()
        if schema_id not in self._by_id:
            raise UnknownSchemaError(schema_id)
        return self._by_id[schema_id]

    def _id_for(self, schema: str) -> int:
        for schema_id, text in self._by_id.items():
            if _normal(text) == _normal(schema):
                return schema_id
        new_id = len(self._by_id) + 1
        self._by_id[new_id] = schema
        return new_id

    async def register(self, subject: str, schema: str) -> int:
        """Register or find."""
        self._raise_if_down()
        parse_avro(schema)
        existing = await self.lookup(subject, schema)
        if existing is not None:
            return existing.schema_id
        report = await self.test_compatibility(subject, schema)
        if not report.is_compatible:
            raise IncompatibleSchemaError(f"{subject}: " + "; ".join(report.messages))
        schema_id = self._id_for(schema)
        history = self._subjects.setdefault(subject, [])
        history.append(RegisteredSchema(subject, len(history) + 1, schema_id, schema))
        return schema_id

    async def lookup(self, subject: str, schema: str) -> RegisteredSchema | None:
        """Equal schema under subject."""
        self._raise_if_down()
        for registered in self._subjects.get(subject, []):
            if _normal(registered.schema) == _normal(schema):
                return registered
        return None

    async def subjects(self) -> list[str]:
        """Every subject."""
        self._raise_if_down()
        return sorted(self._subjects)

    async def versions(self, subject: str) -> list[int]:
        """Versions of a subject."""
        self._raise_if_down()
        return [r.version for r in self._subjects.get(subject, [])]

    async def get_version(self, subject: str, version: int | None = None) -> RegisteredSchema:
        """One version."""
        self._raise_if_down()
        history = self._subjects.get(subject, [])
        if not history:
            raise ConfigurationError(f"subject {subject} does not exist")
        if version is None:
            return history[-1]
        for registered in history:
            if registered.version == version:
                return registered
        raise ConfigurationError(f"subject {subject} has no version {version}")

    async def get_compatibility(self, subject: str | None = None) -> str | None:
        """Subject level or global level."""
        self._raise_if_down()
        return self._global if subject is None else self._levels.get(subject)

    async def set_compatibility(self, level: str, subject: str | None = None) -> None:
        """Set a level."""
        self._raise_if_down()
        if subject is None:
            self._global = level.upper()
        else:
            self._levels[subject] = level.upper()

    async def test_compatibility(self, subject: str, schema: str) -> CompatibilityReport:
        """Check against the subject's versions at its level."""
        self._raise_if_down()
        level = self._levels.get(subject, self._global)
        previous = [r.schema for r in self._subjects.get(subject, [])]
        result = check_compatibility(schema, previous, level)
        return CompatibilityReport(result.is_compatible, [p.describe() for p in result.problems])

    async def close(self) -> None:
        """Nothing to release."""
