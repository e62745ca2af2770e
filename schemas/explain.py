"""Field-level explanations of why one Avro schema cannot read data written with another.

The verdict always comes from the `avro` package's `ReaderWriterCompatibilityChecker` (a port of Avro
Java's SchemaCompatibility, the code Confluent Schema Registry runs). That checker merges its findings into
sets of messages and locations that lose their pairing, and it restarts the location at every union
branch, so this module walks the two schemas itself — asking the checker about each sub-schema pair — to
name the field that breaks, the rule of the Avro specification it breaks, and what to do about it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    lookup_writer_field,
    schema_name_equals,
)

__all__ = ["RULES", "Finding", "explain", "is_readable", "render_type", "suggest_default"]

_NAMED = ("record", "enum", "fixed")

# The Avro specification's schema-resolution rules, one per incompatibility type of the checker.
RULES = {
    "reader_field_missing_default_value": "a reader field the writer lacks must have a default",
    "type_mismatch": "types must match or promote (int→long→float→double, string↔bytes)",
    "missing_enum_symbols": "every symbol the writer may write must be known to the reader, or the reader's "
    "enum must declare a default",
    "name_mismatch": "named types match by name, or by an alias of the reader",
    "fixed_size_mismatch": "fixed types must have the same size",
    "missing_union_branch": "every branch of the writer's union must be readable by the reader",
}


@dataclass(frozen=True)
class Finding:
    """One reason a reader cannot read a writer: where, which rule, and a sentence a developer can act on."""

    kind: str
    path: str
    rule: str
    message: str


def is_readable(reader: avro.schema.Schema, writer: avro.schema.Schema) -> bool:
    """Whether `reader` can read everything `writer` writes (Avro's resolution rules)."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)  # type: ignore[no-untyped-call]
    return result.compatibility is SchemaCompatibilityType.compatible


def render_type(schema: avro.schema.Schema) -> str:
    """A short human form of a type: `string`, `long(timestamp-millis)`, `array<string>`, `null | Task`."""
    kind = schema.type
    if kind == "union":
        return " | ".join(render_type(branch) for branch in cast("avro.schema.UnionSchema", schema).schemas)
    if kind == "array":
        return f"array<{render_type(cast('avro.schema.ArraySchema', schema).items)}>"
    if kind == "map":
        return f"map<{render_type(cast('avro.schema.MapSchema', schema).values)}>"
    if kind in _NAMED:
        return f"{kind} {cast('avro.schema.NamedSchema', schema).fullname}"
    logical = schema.get_prop("logicalType")
    return f"{kind}({logical})" if logical else str(kind)


def suggest_default(schema: avro.schema.Schema) -> str:
    """A JSON default that fits `schema` (for a union, its first branch, as the specification requires)."""
    return json.dumps(_default_value(schema))


def _default_value(schema: avro.schema.Schema) -> Any:
    kind = schema.type
    simple: dict[str, Any] = {
        "null": None,
        "boolean": False,
        "int": 0,
        "long": 0,
        "float": 0.0,
        "double": 0.0,
        "string": "",
        "bytes": "",
        "array": [],
        "map": {},
    }
    if kind in simple:
        return simple[kind]
    if kind == "union":
        return _default_value(cast("avro.schema.UnionSchema", schema).schemas[0])
    if kind == "enum":
        enum = cast("avro.schema.EnumSchema", schema)
        return enum.get_prop("default") or enum.symbols[0]
    if kind == "fixed":
        return "\u0000" * cast("avro.schema.FixedSchema", schema).size
    record = cast("avro.schema.RecordSchema", schema)
    return {f.name: f.default if f.has_default else _default_value(f.type) for f in record.fields}


@dataclass(frozen=True)
class _Roles:
    """Who reads whom: in BACKWARD checks the reader is the new schema, in FORWARD checks the old one."""

    reader_is_new: bool


def explain(reader: avro.schema.Schema, writer: avro.schema.Schema, *, reader_is_new: bool) -> list[Finding]:
    """Why `reader` cannot read `writer` ([] when it can); `reader_is_new` says which side is the change."""
    if is_readable(reader, writer):
        return []
    findings = _walk(reader, writer, "", _Roles(reader_is_new))
    if findings:
        return findings
    # The walk mirrors the checker's rules; should a future checker refuse for a reason it does not know,
    # report the checker's own words rather than a silent "incompatible".
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)  # type: ignore[no-untyped-call]
    kinds = [str(getattr(kind, "value", kind)) for kind in result.incompatibilities] or ["incompatible"]
    return [
        Finding(kinds[0], ",".join(sorted(result.locations)), RULES.get(kinds[0], "Avro schema resolution"), message)
        for message in sorted(result.messages) or ["the reader cannot read the writer"]
    ]


def _label(path: str) -> str:
    return f"field '{path}'" if path else "the top-level type"


def _walk(reader: avro.schema.Schema, writer: avro.schema.Schema, path: str, roles: _Roles) -> list[Finding]:
    """Findings for one incompatible (reader, writer) pair at `path`."""
    if is_readable(reader, writer):
        return []
    if writer.type == "union":
        return _walk_writer_union(reader, cast("avro.schema.UnionSchema", writer), path, roles)
    if reader.type == "union":
        match = _matching_branch(cast("avro.schema.UnionSchema", reader).schemas, writer)
        return _walk(match, writer, path, roles) if match is not None else [_type_mismatch(reader, writer, path, roles)]
    walker = _SAME_KIND_WALKERS.get(reader.type) if reader.type == writer.type else None
    return walker(reader, writer, path, roles) if walker is not None else [_type_mismatch(reader, writer, path, roles)]


def _walk_items(
    reader: avro.schema.ArraySchema, writer: avro.schema.ArraySchema, path: str, roles: _Roles
) -> list[Finding]:
    return _walk(reader.items, writer.items, f"{path}[]", roles)


def _walk_values(
    reader: avro.schema.MapSchema, writer: avro.schema.MapSchema, path: str, roles: _Roles
) -> list[Finding]:
    return _walk(reader.values, writer.values, f"{path}{{}}", roles)


def _walk_writer_union(
    reader: avro.schema.Schema, writer: avro.schema.UnionSchema, path: str, roles: _Roles
) -> list[Finding]:
    findings: list[Finding] = []
    reader_branches = cast("avro.schema.UnionSchema", reader).schemas if reader.type == "union" else [reader]
    for branch in writer.schemas:
        if is_readable(reader, branch):
            continue
        match = _matching_branch(reader_branches, branch)
        if match is not None:
            findings.extend(_walk(match, branch, path, roles))
            continue
        lacking = render_type(branch)
        if roles.reader_is_new:
            message = (
                f"{_label(path)} no longer accepts {lacking}, which records written with the previous schema "
                f"may hold: new readers fail on them; keep {lacking} in the type"
            )
        else:
            message = (
                f"{_label(path)} now accepts {lacking}, which readers still on the previous schema "
                f"({render_type(reader)}) cannot read; write it into a new field instead, so old readers skip it"
            )
        findings.append(Finding("missing_union_branch", path, RULES["missing_union_branch"], message))
    return findings


def _matching_branch(branches: list[avro.schema.Schema], writer: avro.schema.Schema) -> avro.schema.Schema | None:
    """The reader branch Avro would pick for `writer`: same named type (by name or alias), else same type."""
    same_type = [branch for branch in branches if branch.type == writer.type]
    if writer.type in _NAMED:
        for branch in same_type:
            if schema_name_equals(cast("avro.schema.NamedSchema", branch), cast("avro.schema.NamedSchema", writer)):
                return branch
    return same_type[0] if same_type else None


def _walk_records(
    reader: avro.schema.RecordSchema, writer: avro.schema.RecordSchema, path: str, roles: _Roles
) -> list[Finding]:
    findings = _name_findings(reader, writer, path, roles)
    for field in reader.fields:
        field_path = f"{path}.{field.name}" if path else field.name
        writer_field = lookup_writer_field(writer_schema=writer, reader_field=field)
        if writer_field is None:
            if not field.has_default:
                unmatched = [
                    f.name
                    for f in writer.fields
                    if all(lookup_writer_field(writer_schema=writer, reader_field=r) is not f for r in reader.fields)
                ]
                findings.append(_missing_default(field, field_path, unmatched, roles))
            continue
        findings.extend(_walk(field.type, writer_field.type, field_path, roles))
    return findings


def _missing_default(field: avro.schema.Field, path: str, unmatched: list[str], roles: _Roles) -> Finding:
    if roles.reader_is_new:
        hint = (
            f'; if it renames {", ".join(repr(name) for name in unmatched)}, add "aliases": ["{unmatched[0]}"]'
            if unmatched
            else ""
        )
        message = (
            f"field '{path}' was added without a default: readers of the new schema cannot fill it from records "
            f'written with the previous schema; add "default": {suggest_default(field.type)}{hint}'
        )
    else:
        message = (
            f"field '{path}' was removed, but the previous schema declares it without a default: readers still "
            f'on the previous schema cannot fill it from new records; keep the field (mark it "deprecated") '
            f"until no version without a default for it is served"
        )
    return Finding("reader_field_missing_default_value", path, RULES["reader_field_missing_default_value"], message)


def _name_findings(
    reader: avro.schema.NamedSchema, writer: avro.schema.NamedSchema, path: str, roles: _Roles
) -> list[Finding]:
    if schema_name_equals(reader, writer):
        return []
    where = f" at '{path}'" if path else ""
    if roles.reader_is_new:
        message = (
            f"{reader.type} {writer.fullname}{where} was renamed to {reader.fullname}: Avro matches named types by "
            f'name; add "aliases": ["{writer.fullname}"] to {reader.fullname}'
        )
    else:
        message = (
            f"{writer.type} {reader.fullname}{where} was renamed to {writer.fullname}: readers still on the "
            f"previous schema only know {reader.fullname} and aliases cannot be added to them; keep the name"
        )
    return [Finding("name_mismatch", path, RULES["name_mismatch"], message)]


def _walk_enums(
    reader: avro.schema.EnumSchema, writer: avro.schema.EnumSchema, path: str, roles: _Roles
) -> list[Finding]:
    findings = _name_findings(reader, writer, path, roles)
    unknown = [symbol for symbol in writer.symbols if symbol not in reader.symbols]
    default = reader.get_prop("default")
    if unknown and not (default and default in reader.symbols):
        symbols = ", ".join(unknown)
        where = f"{_label(path)} (enum {reader.fullname})"
        if roles.reader_is_new:
            message = (
                f"{where} no longer has symbol(s) {symbols}, which records written with the previous schema may "
                f'hold; keep them, or give the enum a "default" symbol new readers map unknown ones to'
            )
        else:
            message = (
                f'{where} gained symbol(s) {symbols}, and the previous schema\'s enum declares no "default": '
                f"readers still on it fail on new records; only enums that already declare a default can grow"
            )
        findings.append(Finding("missing_enum_symbols", path, RULES["missing_enum_symbols"], message))
    return findings


def _walk_fixed(
    reader: avro.schema.FixedSchema, writer: avro.schema.FixedSchema, path: str, roles: _Roles
) -> list[Finding]:
    findings = _name_findings(reader, writer, path, roles)
    if reader.size != writer.size:
        old, new = (writer.size, reader.size) if roles.reader_is_new else (reader.size, writer.size)
        message = (
            f"{_label(path)} (fixed {reader.fullname}) changed size from {old} to {new} bytes; a fixed size can "
            f"never change: add a new field with the new size"
        )
        findings.append(Finding("fixed_size_mismatch", path, RULES["fixed_size_mismatch"], message))
    return findings


def _type_mismatch(reader: avro.schema.Schema, writer: avro.schema.Schema, path: str, roles: _Roles) -> Finding:
    old, new = (writer, reader) if roles.reader_is_new else (reader, writer)
    who = "readers of the new schema" if roles.reader_is_new else "readers still on the previous schema"
    message = (
        f"{_label(path)} changed type from {render_type(old)} to {render_type(new)}: {who} cannot read "
        f"{render_type(writer)} as {render_type(reader)}; keep the old type, or add a new field with the new "
        f"type and convert in an upcaster"
    )
    return Finding("type_mismatch", path, RULES["type_mismatch"], message)


# Walkers of a (reader, writer) pair of the same kind; any other pair is a type mismatch.
_SAME_KIND_WALKERS: dict[str, Callable[[Any, Any, str, _Roles], list[Finding]]] = {
    "record": _walk_records,
    "enum": _walk_enums,
    "fixed": _walk_fixed,
    "array": _walk_items,
    "map": _walk_values,
}
