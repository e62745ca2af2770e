"""Offline compatibility checks with Confluent Schema Registry's levels, on Apache Avro's own resolution rules.

Levels (Confluent's definitions): BACKWARD — the new schema reads data written with the last previous one;
FORWARD — the last previous schema reads data written with the new one; FULL — both; the _TRANSITIVE
variants compare with every previous version instead of the last; NONE — no check. The reader/writer
rules themselves come from the `avro` package's `ReaderWriterCompatibilityChecker` (a port of Avro Java's
SchemaCompatibility), not from code written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from keel.errors import ConfigurationError
from schemas.catalog import COMPATIBILITY_LEVELS

__all__ = ["CompatibilityResult", "Incompatibility", "check_compatibility", "parse_avro"]


@dataclass(frozen=True)
class Incompatibility:
    """One reason a reader cannot read a writer."""

    direction: str  # "new reads old" or "old reads new"
    other_version: int  # 1-based position in the previous list
    kind: str
    location: str
    message: str

    def describe(self) -> str:
        """One line a developer can act on."""
        return f"{self.direction} (previous #{self.other_version}): {self.kind} at {self.location}: {self.message}"


@dataclass(frozen=True)
class CompatibilityResult:
    """Verdict of a check: compatible or not, and why not."""

    level: str
    is_compatible: bool
    problems: list[Incompatibility] = field(default_factory=list)


def parse_avro(text: str, *, what: str = "schema") -> avro.schema.Schema:
    """Parse Avro schema JSON; ConfigurationError (unusable input) when it is not valid JSON or Avro."""
    try:
        return avro.schema.parse(text)
    except Exception as error:  # avro raises SchemaParseException, JSONDecodeError and others
        raise ConfigurationError(f"{what} is not a valid Avro schema: {error}") from error


def _problems(
    reader: avro.schema.Schema, writer: avro.schema.Schema, direction: str, other: int
) -> list[Incompatibility]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)  # type: ignore[no-untyped-call]
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = sorted(str(getattr(k, "name", k)) for k in result.incompatibilities) or ["INCOMPATIBLE"]
    messages = sorted(result.messages) or ["reader cannot read writer"]
    locations = sorted(result.locations) or ["/"]
    return [
        Incompatibility(direction, other, kinds[min(i, len(kinds) - 1)], locations[min(i, len(locations) - 1)], message)
        for i, message in enumerate(messages)
    ]


def check_compatibility(new: str, previous: list[str], level: str) -> CompatibilityResult:
    """Check `new` against `previous` (oldest first) at a Confluent level."""
    level = level.upper()
    if level not in COMPATIBILITY_LEVELS:
        raise ConfigurationError(f"unknown compatibility level {level}; one of {', '.join(COMPATIBILITY_LEVELS)}")
    new_schema = parse_avro(new, what="the new schema")
    olds = [parse_avro(text, what=f"previous schema #{i}") for i, text in enumerate(previous, start=1)]
    if level == "NONE" or not olds:
        return CompatibilityResult(level, is_compatible=True)
    indexed = list(enumerate(olds, start=1))
    compared = indexed if level.endswith("_TRANSITIVE") else indexed[-1:]
    problems: list[Incompatibility] = []
    for position, old in compared:
        if level.startswith(("BACKWARD", "FULL")):
            problems.extend(_problems(new_schema, old, "new reads old", position))
        if level.startswith(("FORWARD", "FULL")):
            problems.extend(_problems(old, new_schema, "old reads new", position))
    return CompatibilityResult(level, is_compatible=not problems, problems=problems)
