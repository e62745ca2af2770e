"""The CI gate (`make check` → `keel schemas gate`): every local version against its predecessors.

Each version's subject schema (the envelope with that payload) is checked, offline, against every older
version of the same entity at the level `subjects.toml` configures for its subject — the check the registry
will run when `keel schemas register` submits it, so a breaking change fails in CI rather than at release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.catalog import Catalog
from schemas.compatibility import CompatibilityResult, check_compatibility

__all__ = ["GateResult", "find_name_collisions", "run_gate"]


@dataclass(frozen=True)
class GateResult:
    """One version's verdict against its predecessors."""

    entity: str
    version: int
    level: str
    result: CompatibilityResult
    collisions: list[str] = field(default_factory=list)

    @property
    def is_compatible(self) -> bool:
        """Whether the version passes: compatible at its level, and no field name doubles as another's alias."""
        return self.result.is_compatible and not self.collisions

    def lines(self) -> list[str]:
        """Human-readable verdict: one line, then one indented line per incompatibility."""
        against = {1: "nothing (first version)", 2: "v1"}.get(self.version, f"v1..v{self.version - 1}")
        verdict = "ok" if self.is_compatible else "INCOMPATIBLE"
        lines = [f"{self.entity} v{self.version}: {verdict} at {self.level} against {against}"]
        for problem in self.result.problems:
            lines.append(f"    {problem.direction} (v{problem.other_version}): {problem.message}")
            lines.append(f"        rule: {problem.rule}")
        lines.extend(f"    {collision}" for collision in self.collisions)
        return lines


def find_name_collisions(document: Any, path: str = "") -> list[str]:
    """Fields whose name or alias another field of the same record also uses.

    Avro resolution could not tell which field an old name means; Avro Java (so the registry) fails such a
    schema when it runs a compatibility rule, e.g. a field re-added under a name an alias already holds.
    """
    found: list[str] = []
    if isinstance(document, list):
        for branch in document:
            found.extend(find_name_collisions(branch, path))
        return found
    if not isinstance(document, dict):
        return found
    owners: dict[str, str] = {}
    for spec in document.get("fields", []):
        name = spec["name"]
        for claimed in (name, *spec.get("aliases", [])):
            if claimed in owners and owners[claimed] != name:
                found.append(
                    f"field '{path}{name}' and field '{path}{owners[claimed]}' both answer to '{claimed}': "
                    f"readers could not tell them apart; choose another name"
                )
            owners.setdefault(claimed, name)
        found.extend(find_name_collisions(spec["type"], f"{path}{name}."))
    for key in ("items", "values"):
        if key in document:
            found.extend(find_name_collisions(document[key], path))
    return found


def run_gate(catalog: Catalog) -> list[GateResult]:
    """Check every version of every entity against all its predecessors at the configured level."""
    results = []
    for entity in catalog.entities():
        level = catalog.policy(entity).compatibility
        texts = [catalog.schema(entity, version).text for version in catalog.versions(entity)]
        for index, text in enumerate(texts):
            result = check_compatibility(text, texts[:index], level)
            collisions = find_name_collisions(catalog.schema(entity, index + 1).envelope)
            results.append(GateResult(entity, index + 1, level, result, collisions))
    return results
