"""Payload resolution between two versions of an entity, on plain dicts.

Upward (old → new) it follows Avro's schema-resolution rules for records of named fields: match by name or
by a reader alias, fill absent fields from their defaults, map unknown enum symbols to the enum default.
Downward (new → old) it also follows renames declared by the newer schema's aliases, which Avro ignores on
the writer side, so a legacy client sees its old field name rather than a silent default. Whatever the
target cannot represent is reported as a caution, never dropped silently.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from schemas.catalog import EntitySchema, FieldSpec

__all__ = ["Resolution", "field_mapping", "resolve_payload"]


@dataclass
class Resolution:
    """A payload in the target version, its changed fields renamed, and what could not be represented."""

    payload: dict[str, Any] | None
    changed_fields: tuple[str, ...]
    cautions: list[str] = field(default_factory=list)


def field_mapping(source: EntitySchema, target: EntitySchema) -> dict[str, str]:
    """Source field name → target field name, through equal names and aliases in either direction."""
    mapping: dict[str, str] = {}
    target_names = {spec.name for spec in target.fields}
    for spec in source.fields:
        if spec.name in target_names:
            mapping[spec.name] = spec.name
            continue
        for candidate in target.fields:
            if spec.name in candidate.aliases or candidate.name in spec.aliases:
                mapping[spec.name] = candidate.name
                break
    return mapping


_ATOMIC = frozenset({str, int, float, bool, type(None)})  # immutable: a deep copy is the value itself
_MAPPINGS: dict[tuple[int, int], tuple[EntitySchema, EntitySchema, dict[str, str], dict[str, str]]] = {}


def _copy(value: Any) -> Any:
    """`copy.deepcopy(value)`, without its cost for the immutable scalars most fields hold."""
    return value if type(value) in _ATOMIC else copy.deepcopy(value)


def _mappings(source: EntitySchema, target: EntitySchema) -> tuple[dict[str, str], dict[str, str]]:
    """`field_mapping(source, target)` and its reverse, computed once per pair of schema objects."""
    key = (id(source), id(target))
    cached = _MAPPINGS.get(key)
    if cached is None or cached[0] is not source or cached[1] is not target:
        mapping = field_mapping(source, target)
        cached = (source, target, mapping, {new: old for old, new in mapping.items()})  # keeps the ids alive
        _MAPPINGS[key] = cached
    return cached[2], cached[3]


def _default_of(spec: FieldSpec) -> Any:
    return _copy(spec.default) if spec.has_default else None


def _is_default(spec: FieldSpec, value: Any) -> bool:
    return spec.has_default and value == spec.default


def resolve_payload(
    payload: dict[str, Any] | None, changed: tuple[str, ...], source: EntitySchema, target: EntitySchema
) -> Resolution:
    """Move a payload (and the names of its changed fields) from `source`'s shape into `target`'s."""
    if payload is None:
        return Resolution(None, (), [])
    mapping, reverse = _mappings(source, target)
    result: dict[str, Any] = {}
    cautions: list[str] = []
    for spec in target.fields:
        old_name = reverse.get(spec.name)
        if old_name is None or old_name not in payload:
            result[spec.name] = _default_of(spec)
            continue
        value = _copy(payload[old_name])
        symbols = spec.enum_symbols
        if symbols is not None and value is not None and value not in symbols:
            fallback = spec.enum_default if spec.enum_default is not None else _default_of(spec)
            cautions.append(f"{spec.name}: {value} is not in v{target.version}, shown as {fallback}")
            value = fallback
        result[spec.name] = value
    for spec in source.fields:
        if spec.name not in mapping and spec.name in payload and not _is_default(spec, payload[spec.name]):
            cautions.append(f"{spec.name}: not in v{target.version}, value not shown")
    renamed = tuple(dict.fromkeys(mapping[name] for name in changed if name in mapping))
    return Resolution(result, renamed, cautions)
