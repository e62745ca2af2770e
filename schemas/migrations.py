"""The migration layer: payloads move between versions by Avro-style resolution plus code steps.

Resolution (schemas/resolution.py) covers additive changes: added fields with defaults, renames through
aliases, new enum symbols. Code steps cover semantic changes; they are pure functions registered per entity
and version step and named `upcast_<entity>_v<N>_v<N+1>` / `downcast_<entity>_v<N+1>_v<N>`. A step runs
on a payload already resolved into its target version and may fix values and changed fields.
A step can be disabled by name (settings or `schemas/subjects.toml`): the rollback path for a bad one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from keel.errors import ConfigurationError
from keel.logging import get_logger
from schemas.catalog import Catalog, default_catalog
from schemas.envelope import ChangeEvent
from schemas.resolution import resolve_payload

__all__ = ["NOTHING_VISIBLE", "MigratedPayload", "MigrationRegistry", "Step", "StepResult", "downcast_event"]

_log = get_logger("migrations")


@dataclass
class StepResult:
    """What a code step returns: the fixed payload, changed fields and any cautions it adds."""

    payload: dict[str, Any]
    changed_fields: tuple[str, ...]
    cautions: list[str] = field(default_factory=list)


Step = Callable[[dict[str, Any], tuple[str, ...]], StepResult]


@dataclass
class MigratedPayload:
    """A payload moved to another version, with the steps applied and what the target cannot show."""

    payload: dict[str, Any] | None
    changed_fields: tuple[str, ...]
    version: int
    applied: list[str] = field(default_factory=list)
    cautions: list[str] = field(default_factory=list)


class MigrationRegistry:
    """Code steps per (entity, from, to), chained with resolution between any two versions."""

    def __init__(self, catalog: Catalog | None = None, disabled: Iterable[str] = ()) -> None:
        self.catalog = catalog or default_catalog()
        self._upcasters: dict[tuple[str, int], tuple[str, Step]] = {}
        self._downcasters: dict[tuple[str, int], tuple[str, Step]] = {}
        self._normalizers: dict[str, tuple[str, Step]] = {}
        self.disabled: set[str] = set(disabled)
        self.performed: dict[str, int] = {}  # step name → times applied
        self.skipped: dict[str, int] = {}  # disabled step name → times it would have run
        self.transitions: dict[str, int] = {}  # "task v1→v3" → payloads moved

    def versions_in_use(self) -> dict[str, int]:
        """The current (server model) version of every entity."""
        return {entity: self.catalog.current_version(entity) for entity in self.catalog.entities()}

    def log_configuration(self) -> None:
        """Log the schema versions in use, the registered steps and the disabled ones (once, at start)."""
        _log.info(
            "migrations configured",
            versions=self.versions_in_use(),
            steps=self.step_names(),
            disabled=sorted(self.disabled),
        )

    def register_upcaster(self, entity: str, from_version: int, step: Step) -> None:
        """Register the code step from `from_version` to `from_version + 1`."""
        self._check(entity, from_version + 1)
        self._upcasters[(entity, from_version)] = (step.__name__, step)

    def register_downcaster(self, entity: str, from_version: int, step: Step) -> None:
        """Register the code step from `from_version` down to `from_version - 1`."""
        self._check(entity, from_version - 1)
        self._downcasters[(entity, from_version)] = (step.__name__, step)

    def register_normalizer(self, entity: str, step: Step) -> None:
        """Register the invariant step every payload passes once it is in the current version."""
        self._normalizers[entity] = (step.__name__, step)

    def step_names(self) -> list[str]:
        """Names of every registered code step."""
        names = [name for name, _ in self._upcasters.values()] + [name for name, _ in self._downcasters.values()]
        return sorted(names + [name for name, _ in self._normalizers.values()])

    def disable(self, name: str) -> None:
        """Stop applying the step called `name` (rollback of a bad migration)."""
        if name not in self.step_names():
            raise ConfigurationError(f"no migration step named {name!r}; known: {', '.join(self.step_names())}")
        self.disabled.add(name)

    def _check(self, entity: str, version: int) -> None:
        if version not in self.catalog.versions(entity):
            raise ConfigurationError(f"{entity} has no version {version}")

    def _apply(
        self, name: str, step: Step, payload: dict[str, Any], changed: tuple[str, ...], result: MigratedPayload
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        if name in self.disabled:
            self.skipped[name] = self.skipped.get(name, 0) + 1
            _log.debug("migration step disabled, skipped", step=name)
            return payload, changed
        outcome = step(payload, changed)
        result.applied.append(name)
        result.cautions.extend(outcome.cautions)
        self.performed[name] = self.performed.get(name, 0) + 1
        return outcome.payload, outcome.changed_fields

    def migrate(
        self,
        entity: str,
        payload: dict[str, Any] | None,
        changed: tuple[str, ...],
        from_version: int,
        to_version: int | None = None,
    ) -> MigratedPayload:
        """Move a payload from one version to another (the current one by default), step by step."""
        target = self.catalog.current_version(entity) if to_version is None else to_version
        self._check(entity, from_version)
        self._check(entity, target)
        if payload is not None and not changed:
            # An empty list means "every field of the writer's version"; make it explicit before renaming,
            # or fields the writer never knew would look written and be reset to their defaults.
            changed = self.catalog.schema(entity, from_version).field_names
        result = MigratedPayload(payload, changed, from_version)
        version = from_version
        step_dir = 1 if target >= version else -1
        while version != target:
            following = version + step_dir
            resolved = resolve_payload(
                result.payload,
                result.changed_fields,
                self.catalog.schema(entity, version),
                self.catalog.schema(entity, following),
            )
            result.cautions.extend(resolved.cautions)
            new_payload, new_changed = resolved.payload, resolved.changed_fields
            registry = self._upcasters if step_dir == 1 else self._downcasters
            entry = registry.get((entity, version))
            if entry is not None and new_payload is not None:
                new_payload, new_changed = self._apply(entry[0], entry[1], new_payload, new_changed, result)
            result.payload, result.changed_fields, result.version = new_payload, new_changed, following
            version = following
        if target == self.catalog.current_version(entity) and result.payload is not None:
            normalizer = self._normalizers.get(entity)
            if normalizer is not None:
                result.payload, result.changed_fields = self._apply(
                    normalizer[0], normalizer[1], result.payload, result.changed_fields, result
                )
        if from_version != target:
            key = f"{entity} v{from_version}→v{target}"
            self.transitions[key] = self.transitions.get(key, 0) + 1
        if result.applied or from_version != target:
            _log.debug(
                "migrated",
                entity=entity,
                from_version=from_version,
                to_version=target,
                steps=result.applied,
                cautions=len(result.cautions),
            )
        return result


NOTHING_VISIBLE = "*"  # the caution field of a change a version cannot see at all


def downcast_event(event: ChangeEvent, to_version: int, registry: MigrationRegistry) -> tuple[ChangeEvent, list[str]]:
    """The event as a client speaking `to_version` reads it, and the cautions naming what it cannot show.

    Usually a down-cast (outbox entries are in the current version, clients may be older); an up-cast when the
    event is older than the client. A DELETE only changes its version. When none of the fields the change
    writes exists in `to_version`, the payload still travels but `changed_fields` would be empty — which the
    contract reads as "every field" — so the caution `"*: ..."` (`NOTHING_VISIBLE`) says the client must not
    apply it as a write.
    """
    if event.schema_version == to_version:
        return event, []
    if event.payload is None:
        registry.migrate(event.entity_type, None, (), event.schema_version, to_version)  # validates both versions
        return event.with_payload(None, (), to_version), []
    moved = registry.migrate(event.entity_type, event.payload, event.changed_fields, event.schema_version, to_version)
    cautions = list(dict.fromkeys(moved.cautions))
    if not moved.changed_fields:
        cautions.append(
            f"{NOTHING_VISIBLE}: nothing this change writes exists in {event.entity_type} v{to_version}; "
            f"do not apply it as a write"
        )
    return event.with_payload(moved.payload, moved.changed_fields, to_version), cautions
