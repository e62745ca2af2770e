"""Registered schema versions are immutable: a committed lock of their fingerprints, and what changed.

A version, once registered, is what every event written with it refers to: editing its `.avsc` afterwards
(even a doc or a custom property) makes a schema the registry no longer finds under that version, so a
gateway that does not auto-register answers 503 for it, and one that does registers a stray new version.
`registered.lock.json` (beside `subjects.toml`, written by `keel schemas lock`) pins the sha256 of each
version's subject schema in canonical JSON (sorted keys, no whitespace; field order kept, it matters to
Avro). `keel schemas gate` fails, offline, when a pinned version no longer matches; new versions are
appended by the next `keel schemas lock`, existing entries are never rewritten.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.errors import ConfigurationError
from schemas.catalog import Catalog, EntitySchema

__all__ = [
    "LOCK_FILE",
    "LockProblem",
    "VersionLock",
    "canonical_json",
    "describe_differences",
    "fingerprint",
]

LOCK_FILE = "registered.lock.json"
_ABOUT = (
    "sha256 of each registered schema version (the subject schema in canonical JSON: sorted keys, no whitespace). "
    "Written by `keel schemas lock`, checked by `keel schemas gate`. Never edit an entry: a registered version is "
    "immutable, so a change goes into a new version."
)


def canonical_json(document: Any) -> str:
    """A schema document as canonical JSON: sorted keys, no whitespace, non-ASCII kept."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(schema: EntitySchema) -> str:
    """The sha256 (hex) of a version's subject schema in canonical JSON."""
    return hashlib.sha256(canonical_json(schema.envelope).encode()).hexdigest()


@dataclass(frozen=True)
class LockProblem:
    """A pinned version that no longer matches the catalog."""

    entity: str
    version: int
    message: str


@dataclass
class VersionLock:
    """Fingerprints of registered versions: entity → version → sha256."""

    versions: dict[str, dict[int, str]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> VersionLock | None:
        """The lock at `path`, or None when there is none; ConfigurationError when it is unreadable."""
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from error
        versions = document.get("versions") if isinstance(document, dict) else None
        if not isinstance(versions, dict):
            raise ConfigurationError(f"{path}: expected {{'versions': {{entity: {{version: sha256}}}}}}")
        try:
            return cls(
                {
                    str(entity): {int(version): str(digest) for version, digest in pinned.items()}
                    for entity, pinned in versions.items()
                }
            )
        except (AttributeError, ValueError) as error:
            raise ConfigurationError(f"{path}: versions must map entity → version number → sha256") from error

    def write(self, path: Path) -> None:
        """Write the lock (deterministic: sorted entities and versions, one line per version)."""
        document = {
            "about": _ABOUT,
            "versions": {
                entity: {str(version): self.versions[entity][version] for version in sorted(self.versions[entity])}
                for entity in sorted(self.versions)
            },
        }
        path.write_text(json.dumps(document, indent=2) + "\n")

    def problems(self, catalog: Catalog) -> list[LockProblem]:
        """Pinned versions that changed or disappeared from the catalog."""
        found: list[LockProblem] = []
        for entity, pinned in sorted(self.versions.items()):
            for version, digest in sorted(pinned.items()):
                schema = catalog.schemas.get(entity, {}).get(version)
                if schema is None:
                    found.append(
                        LockProblem(
                            entity,
                            version,
                            f"{entity} v{version} is pinned in {LOCK_FILE} but missing from the catalog: events "
                            f"written with it still refer to it; restore it from version control",
                        )
                    )
                elif fingerprint(schema) != digest:
                    found.append(
                        LockProblem(
                            entity,
                            version,
                            f"{entity} v{version} differs from the version pinned in {LOCK_FILE} (sha256 "
                            f"{digest[:12]}… → {fingerprint(schema)[:12]}…): a registered version is immutable; "
                            f"restore {schema.source.name} (or avro/envelope.avsc, if every version changed) from "
                            f"version control (`git log -p -- {schema.source.name}`) and put the change in a new "
                            f"version",
                        )
                    )
        return found

    def unpinned(self, catalog: Catalog) -> list[EntitySchema]:
        """Catalog versions the lock does not pin yet, oldest first per entity."""
        return [
            catalog.schema(entity, version)
            for entity in catalog.entities()
            for version in catalog.versions(entity)
            if version not in self.versions.get(entity, {})
        ]

    def extended(self, catalog: Catalog) -> VersionLock:
        """This lock plus every unpinned version of the catalog (existing entries are kept as they are)."""
        versions = {entity: dict(pinned) for entity, pinned in self.versions.items()}
        for schema in self.unpinned(catalog):
            versions.setdefault(schema.entity, {})[schema.version] = fingerprint(schema)
        return VersionLock(versions)


def describe_differences(old: Any, new: Any) -> list[str]:
    """What differs between two schema documents, one line per difference, fields named by their path.

    Unlike `schemas.diff`, which shows what matters to a reader, this sees every byte of meaning: docs and
    custom properties too (`payload.body: 'keel.sensitive' added`).
    """
    found: list[str] = []
    _walk(old, new, "", found)
    return found


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _walk(old: Any, new: Any, path: str, found: list[str]) -> None:
    if old == new:
        return
    where = path or "(top level)"
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            if key not in new:
                found.append(f"{where}: {key!r} removed")
            elif key not in old:
                found.append(f"{where}: {key!r} added ({_short(new[key])})")
            elif old[key] == new[key]:
                continue
            elif key == "fields" and isinstance(old[key], list) and isinstance(new[key], list):
                _walk_fields(old[key], new[key], path, found)
            elif key in ("type", "items", "values") and isinstance(old[key], dict | list):
                _walk(old[key], new[key], path, found)
            else:
                found.append(f"{where}: {key!r} {_short(old[key])} → {_short(new[key])}")
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for before, after in zip(old, new, strict=True):
            _walk(before, after, path, found)
        return
    found.append(f"{where}: {_short(old)} → {_short(new)}")


def _walk_fields(old: list[Any], new: list[Any], path: str, found: list[str]) -> None:
    olds = {spec.get("name"): spec for spec in old if isinstance(spec, dict)}
    news = {spec.get("name"): spec for spec in new if isinstance(spec, dict)}
    prefix = f"{path}." if path else ""
    found.extend(f"{prefix}{name}: field removed" for name in olds if name not in news)
    found.extend(f"{prefix}{name}: field added" for name in news if name not in olds)
    common = [name for name in olds if name in news]
    if common != [name for name in news if name in olds]:
        found.append(f"{path or '(top level)'}: field order changed")
    for name in common:
        _walk(olds[name], news[name], f"{prefix}{name}", found)
