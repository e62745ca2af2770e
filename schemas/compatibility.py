"""Offline compatibility checks with Confluent Schema Registry's levels, on Apache Avro's own resolution rules.

Levels (Confluent's definitions): BACKWARD — the new schema reads data written with the last previous one;
FORWARD — the last previous schema reads data written with the new one; FULL — both; the _TRANSITIVE
variants compare with every previous version instead of the last; NONE — no check. The reader/writer
rules themselves come from the `avro` package's `ReaderWriterCompatibilityChecker` (a port of Avro Java's
SchemaCompatibility), not from code written here; `schemas/explain.py` turns its verdicts into sentences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import avro.schema

from keel.errors import ConfigurationError
from schemas.catalog import COMPATIBILITY_LEVELS
from schemas.explain import explain

__all__ = ["CompatibilityResult", "Incompatibility", "check_compatibility", "parse_avro", "qualify_aliases"]

BACKWARD_DIRECTION = "new reads old"
FORWARD_DIRECTION = "old reads new"


@dataclass(frozen=True)
class Incompatibility:
    """One reason a reader cannot read a writer."""

    direction: str  # "new reads old" (BACKWARD) or "old reads new" (FORWARD)
    other_version: int  # 1-based position in the previous list
    kind: str  # the checker's incompatibility type, e.g. "reader_field_missing_default_value"
    location: str  # the field path, e.g. "payload.owner"
    message: str  # what breaks and what to do, naming the field
    rule: str = ""  # the Avro resolution rule that is broken

    def describe(self) -> str:
        """One line a developer can act on."""
        rule = f" (rule: {self.rule})" if self.rule else ""
        return f"{self.direction} (previous #{self.other_version}): {self.message}{rule}"


@dataclass(frozen=True)
class CompatibilityResult:
    """Verdict of a check: compatible or not, and why not."""

    level: str
    is_compatible: bool
    problems: list[Incompatibility] = field(default_factory=list)


def qualify_aliases(document: Any, namespace: str = "") -> Any:
    """A copy of a schema document whose named-type aliases are full names.

    The specification lets an alias be relative to the namespace of the type it names, and Avro Java (so
    Confluent Schema Registry) resolves it so; the Python checker compares aliases with full names verbatim,
    so relative aliases are qualified here to give the registry's verdict.
    """
    if isinstance(document, list):
        return [qualify_aliases(branch, namespace) for branch in document]
    if not isinstance(document, dict):
        return document
    copy = dict(document)
    kind = copy.get("type")
    if kind in ("record", "error", "enum", "fixed") and isinstance(copy.get("name"), str):
        name = copy["name"]
        own = name.rpartition(".")[0] if "." in name else str(copy.get("namespace", namespace) or "")
        if isinstance(copy.get("aliases"), list):
            copy["aliases"] = [
                f"{own}.{alias}" if isinstance(alias, str) and "." not in alias and own else alias
                for alias in copy["aliases"]
            ]
        namespace = own
        if isinstance(copy.get("fields"), list):
            copy["fields"] = [
                {**spec, "type": qualify_aliases(spec.get("type"), namespace)} if isinstance(spec, dict) else spec
                for spec in copy["fields"]
            ]
        return copy
    for key in ("items", "values", "type"):
        if key in copy and isinstance(copy[key], dict | list):
            copy[key] = qualify_aliases(copy[key], namespace)
    return copy


def parse_avro(text: str, *, what: str = "schema") -> avro.schema.Schema:
    """Parse Avro schema JSON; ConfigurationError (unusable input) when it is not valid JSON or Avro."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"{what} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from error
    try:
        return avro.schema.parse(json.dumps(qualify_aliases(document)))
    except Exception as error:  # avro raises SchemaParseException, AvroException, TypeError and others
        raise ConfigurationError(f"{what} is not a valid Avro schema: {error}") from error


def _problems(
    reader: avro.schema.Schema, writer: avro.schema.Schema, direction: str, other: int
) -> list[Incompatibility]:
    findings = explain(reader, writer, reader_is_new=direction == BACKWARD_DIRECTION)
    return [
        Incompatibility(direction, other, finding.kind, finding.path, finding.message, finding.rule)
        for finding in findings
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
            problems.extend(_problems(new_schema, old, BACKWARD_DIRECTION, position))
        if level.startswith(("FORWARD", "FULL")):
            problems.extend(_problems(old, new_schema, FORWARD_DIRECTION, position))
    return CompatibilityResult(level, is_compatible=not problems, problems=problems)
