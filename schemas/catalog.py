"""The schema catalog: every entity's payload versions under `schemas/avro/`, composed into event schemas.

Each entity has payload files `avro/<entity>/<entity>.v<N>.avsc`; the subject schema of version N is the
envelope (`avro/envelope.avsc`) with that payload plugged in and the record named `<Entity>Change`.
`subjects.toml` holds each subject's compatibility level and the entity's policy: rollout and which fields
are sensitive. Policy lives there and not in the `.avsc` files because a registered version's text is
immutable: a property added to it makes a different schema the registry no longer finds under that version.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import fastavro

from keel.errors import ConfigurationError

__all__ = ["Catalog", "EntityPolicy", "EntitySchema", "FieldSpec", "default_catalog", "subject_for"]

SCHEMAS_ROOT = Path(__file__).parent
_POLICY_PROPERTY = "keel.sensitive"  # policy once written into payload schemas; now refused there
_VERSION_FILE = re.compile(r"^(?P<entity>[a-z][a-z0-9_]*)\.v(?P<version>\d+)\.avsc$")
COMPATIBILITY_LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)


def subject_for(topic: str) -> str:
    """Subject name of a topic's values under Confluent's TopicNameStrategy."""
    return f"{topic}-value"


@dataclass(frozen=True)
class FieldSpec:
    """One top-level payload field as the catalog needs it for resolution and projection."""

    name: str
    avro_type: Any
    default: Any
    has_default: bool
    aliases: tuple[str, ...]
    deprecated: bool
    doc: str
    sensitive: bool = False  # listed in subjects.toml `sensitive_fields`: encrypted at rest (docs/security.md)

    @property
    def enum_symbols(self) -> tuple[str, ...] | None:
        """Symbols if the field is an enum, else None."""
        kind = self.avro_type
        if isinstance(kind, dict) and kind.get("type") == "enum":
            return tuple(kind["symbols"])
        return None

    @property
    def enum_default(self) -> str | None:
        """The enum's own default symbol (used for symbols a reader does not know)."""
        kind = self.avro_type
        if isinstance(kind, dict) and kind.get("type") == "enum":
            default = kind.get("default")
            return str(default) if default is not None else None
        return None


@dataclass(frozen=True)
class EntitySchema:
    """One version of one entity: its payload record and the composed event schema."""

    entity: str
    version: int
    payload: dict[str, Any]
    envelope: dict[str, Any]
    source: Path
    sensitive_names: frozenset[str] = frozenset()  # the entity's `sensitive_fields` policy (subjects.toml)

    @cached_property
    def fields(self) -> tuple[FieldSpec, ...]:
        """Top-level payload fields in declaration order."""
        specs = []
        for raw in self.payload["fields"]:
            specs.append(
                FieldSpec(
                    name=raw["name"],
                    avro_type=raw["type"],
                    default=raw.get("default"),
                    has_default="default" in raw,
                    aliases=tuple(raw.get("aliases", ())),
                    deprecated="deprecated" in raw,
                    doc=raw.get("doc", ""),
                    sensitive=raw["name"] in self.sensitive_names,
                )
            )
        return tuple(specs)

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        """Names of the payload fields."""
        return tuple(spec.name for spec in self.fields)

    def field(self, name: str) -> FieldSpec:
        """The spec of a payload field by name."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.entity} v{self.version} has no field {name!r}")

    @cached_property
    def text(self) -> str:
        """The event schema as compact JSON, as registered."""
        return json.dumps(self.envelope, separators=(",", ":"))

    @cached_property
    def parsed(self) -> Any:
        """The event schema parsed by fastavro (cached)."""
        return fastavro.parse_schema(copy.deepcopy(self.envelope))

    @cached_property
    def parsed_payload(self) -> Any:
        """The payload record parsed by fastavro (cached)."""
        return fastavro.parse_schema(copy.deepcopy(self.payload))


@dataclass(frozen=True)
class EntityPolicy:
    """Compatibility level and rollout policy of one entity (from subjects.toml)."""

    entity: str
    compatibility: str
    minimum_version: int
    stable_version: int
    newest_version: int
    rollout_tenants: tuple[str, ...] = ()
    rollout_percent: float = 0.0
    sensitive_fields: frozenset[str] = frozenset()  # encrypted at rest in the projections (docs/security.md)


@dataclass
class Catalog:
    """Every entity's versions and policies."""

    schemas: dict[str, dict[int, EntitySchema]]
    policies: dict[str, EntityPolicy]
    default_compatibility: str = "BACKWARD_TRANSITIVE"
    root: Path = field(default=SCHEMAS_ROOT)

    @classmethod
    def load(cls, root: Path = SCHEMAS_ROOT) -> Catalog:
        """Read `root/avro/**.avsc` and `root/subjects.toml`; raise ConfigurationError with the file on error."""
        envelope_file = root / "avro" / "envelope.avsc"
        envelope = _read_json(envelope_file)
        schemas: dict[str, dict[int, EntitySchema]] = {}
        for path in sorted((root / "avro").glob("*/*.avsc")):
            match = _VERSION_FILE.match(path.name)
            if match is None or match["entity"] != path.parent.name:
                raise ConfigurationError(f"{path}: payload files are named <entity>/<entity>.v<N>.avsc")
            entity, version = match["entity"], int(match["version"])
            payload = _read_json(path)
            _raise_if_policy_in_schema(path, payload)
            composed = compose_event_schema(envelope, entity, payload)
            try:
                fastavro.parse_schema(copy.deepcopy(composed))
            except Exception as error:  # fastavro raises several types for invalid schemas
                raise ConfigurationError(f"{path}: not a valid Avro schema: {error}") from error
            schemas.setdefault(entity, {})[version] = EntitySchema(entity, version, payload, composed, path)
        for entity, versions in schemas.items():
            expected = list(range(1, len(versions) + 1))
            if sorted(versions) != expected:
                raise ConfigurationError(f"{entity}: versions must be 1..N without gaps, found {sorted(versions)}")
        policies, default_level = _read_policies(root / "subjects.toml", schemas)
        for entity, versions in schemas.items():
            sensitive = policies[entity].sensitive_fields
            for version, schema in versions.items():
                versions[version] = replace(schema, sensitive_names=sensitive)
        return cls(schemas, policies, default_level, root)

    def entities(self) -> list[str]:
        """Entity types, sorted."""
        return sorted(self.schemas)

    def versions(self, entity: str) -> list[int]:
        """Versions of an entity, oldest first."""
        return sorted(self._versions(entity))

    def current_version(self, entity: str) -> int:
        """The newest version: the server's in-memory model."""
        return max(self._versions(entity))

    def schema(self, entity: str, version: int | None = None) -> EntitySchema:
        """One version (the current one by default)."""
        versions = self._versions(entity)
        chosen = self.current_version(entity) if version is None else version
        if chosen not in versions:
            raise ConfigurationError(f"{entity} has no schema version {chosen}; known: {sorted(versions)}")
        return versions[chosen]

    def sensitive_fields(self, entity: str) -> frozenset[str]:
        """Fields of the current version listed in the entity's `sensitive_fields` (string fields only)."""
        return frozenset(spec.name for spec in self.schema(entity).fields if spec.sensitive)

    def policy(self, entity: str) -> EntityPolicy:
        """Compatibility level and rollout policy of an entity."""
        self._versions(entity)
        return self.policies[entity]

    def _versions(self, entity: str) -> dict[int, EntitySchema]:
        if entity not in self.schemas:
            raise ConfigurationError(f"unknown entity type {entity!r}; known: {', '.join(self.entities())}")
        return self.schemas[entity]


def compose_event_schema(envelope: dict[str, Any], entity: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The envelope with `payload` plugged in and the record named `<Entity>Change`."""
    composed = copy.deepcopy(envelope)
    composed["name"] = "".join(part.capitalize() for part in entity.split("_")) + "Change"
    for spec in composed["fields"]:
        if spec["name"] == "payload":
            spec["type"] = ["null", copy.deepcopy(payload)]
    return composed


def _raise_if_policy_in_schema(path: Path, payload: dict[str, Any]) -> None:
    """Refuse policy properties inside a payload schema: they belong in subjects.toml."""
    tagged = [
        spec.get("name") for spec in payload.get("fields", []) if isinstance(spec, dict) and _POLICY_PROPERTY in spec
    ]
    if tagged:
        raise ConfigurationError(
            f"{path}: {_POLICY_PROPERTY!r} on {tagged}: sensitivity is policy, not contract; list the fields under "
            f"`sensitive_fields` of the entity in subjects.toml (a registered version's text must never change)"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigurationError(f"{path}: file not found") from error
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from error
    if not isinstance(document, dict):
        raise ConfigurationError(f"{path}: expected a JSON object (an Avro record)")
    return document


def _read_policies(path: Path, schemas: dict[str, dict[int, EntitySchema]]) -> tuple[dict[str, EntityPolicy], str]:
    config: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    default_level = str(config.get("defaults", {}).get("compatibility", "BACKWARD_TRANSITIVE")).upper()
    if default_level not in COMPATIBILITY_LEVELS:
        raise ConfigurationError(f"{path}: unknown compatibility level {default_level}")
    policies: dict[str, EntityPolicy] = {}
    entries = config.get("entities", {})
    for entity, versions in schemas.items():
        entry = entries.get(entity, {})
        newest = max(versions)
        level = str(entry.get("compatibility", default_level)).upper()
        if level not in COMPATIBILITY_LEVELS:
            raise ConfigurationError(f"{path}: {entity}: unknown compatibility level {level}")
        policy = EntityPolicy(
            entity=entity,
            compatibility=level,
            minimum_version=int(entry.get("minimum_version", 1)),
            stable_version=int(entry.get("stable_version", newest)),
            newest_version=int(entry.get("newest_version", newest)),
            rollout_tenants=tuple(entry.get("rollout_tenants", ())),
            rollout_percent=float(entry.get("rollout_percent", 0)),
            sensitive_fields=_sensitive_fields(path, entity, entry.get("sensitive_fields", []), versions),
        )
        if not 1 <= policy.minimum_version <= policy.stable_version <= policy.newest_version <= newest:
            raise ConfigurationError(
                f"{path}: {entity}: need 1 <= minimum_version <= stable_version <= newest_version <= {newest}"
            )
        policies[entity] = policy
    return policies, default_level


def _sensitive_fields(path: Path, entity: str, names: Any, versions: dict[int, EntitySchema]) -> frozenset[str]:
    """An entity's `sensitive_fields`, checked: fields of some version, and strings wherever they exist."""
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigurationError(f"{path}: {entity}: sensitive_fields must be a list of field names")
    for name in names:
        types = {v: s.field(name).avro_type for v, s in sorted(versions.items()) if name in s.field_names}
        if not types:
            raise ConfigurationError(f"{path}: {entity}: sensitive field {name!r} is in no version of the schema")
        # A sensitive value is stored as ciphertext text, so only string fields can be sensitive.
        wrong = [f"v{v}: {t}" for v, t in types.items() if t != "string"]
        if wrong:
            raise ConfigurationError(
                f"{path}: {entity}: sensitive field {name!r} must be a string ({', '.join(wrong)})"
            )
    return frozenset(names)


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The catalog shipped in this package (cached)."""
    return Catalog.load()
