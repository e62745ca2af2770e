"""The submission path of schema changes: the local catalog against a live registry, then registration.

Every entity's versions go to the subject `<prefix>.<entity>.changes-value` (TopicNameStrategy), oldest
first. `check_subjects` asks the registry's own compatibility API about every version not yet registered
and explains each refusal field by field with the offline checker; it also checks the chain the
registration will create at the level `subjects.toml` configures. `register_subjects` runs the check,
registers, and sets each subject's level as soon as the subject exists — Apicurio answers 404 to
`PUT /config/{subject}` before that, and setting it before the later versions makes the registry itself
enforce the configured level on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from keel.errors import IncompatibleSchemaError
from schemas.catalog import Catalog, subject_for
from schemas.compatibility import Incompatibility, check_compatibility
from schemas.registry import RegisteredSchema, SchemaRegistry
from schemas.version_lock import describe_differences

__all__ = [
    "CheckIssue",
    "RegistrationOutcome",
    "SubjectCheck",
    "check_subject",
    "check_subjects",
    "register_subjects",
    "subject_name",
]

# Confluent's documented default when neither the subject nor the registry names a level.
_REGISTRY_DEFAULT_LEVEL = "BACKWARD"


def subject_name(prefix: str, entity: str) -> str:
    """The value subject of an entity's change topic: `<prefix>.<entity>.changes-value`."""
    return subject_for(f"{prefix}.{entity}.changes")


@dataclass(frozen=True)
class CheckIssue:
    """Why one local version cannot be registered as it stands."""

    version: int
    source: str  # "registry" (its verdict), "subjects.toml" (the configured level) or "history"
    level: str
    message: str


@dataclass
class SubjectCheck:
    """One entity's local versions against its subject in the registry."""

    entity: str
    subject: str
    configured_level: str
    subject_level: str | None  # the subject's own level; None when it inherits the registry's
    effective_level: str  # the level the registry applies now
    registry_versions: list[int] = field(default_factory=list)
    registered: dict[int, RegisteredSchema] = field(default_factory=dict)  # local version → registration
    pending: list[int] = field(default_factory=list)  # local versions to register, oldest first
    issues: list[CheckIssue] = field(default_factory=list)
    notes: list[CheckIssue] = field(default_factory=list)  # worth knowing, not blocking

    @property
    def is_ok(self) -> bool:
        """Whether every pending version can be registered."""
        return not self.issues

    def issues_of(self, version: int) -> list[CheckIssue]:
        """Issues of one local version."""
        return [issue for issue in self.issues if issue.version == version]


async def _level_of(registry: SchemaRegistry, subject: str) -> tuple[str | None, str]:
    own = await registry.get_compatibility(subject)
    if own is not None:
        return own.upper(), own.upper()
    inherited = await registry.get_compatibility(None)
    return None, (inherited or _REGISTRY_DEFAULT_LEVEL).upper()


async def check_subject(registry: SchemaRegistry, catalog: Catalog, entity: str, prefix: str) -> SubjectCheck:
    """Check every local version of `entity` against the registry; see the module docstring."""
    subject = subject_name(prefix, entity)
    own_level, effective = await _level_of(registry, subject)
    check = SubjectCheck(entity, subject, catalog.policy(entity).compatibility, own_level, effective)
    check.registry_versions = await registry.versions(subject)
    versions = catalog.versions(entity)
    for version in versions:
        found = await registry.lookup(subject, catalog.schema(entity, version).text)
        if found is not None:
            check.registered[version] = found
    check.pending = [v for v in versions if v not in check.registered]
    edited = await _raise_edited_versions(registry, catalog, check)  # before the notes: it may find more
    _note_merged_versions(check)
    newest_registered = max(check.registered, default=0)
    for version in [v for v in check.pending if v < newest_registered and v not in edited]:
        check.issues.append(
            CheckIssue(
                version,
                "history",
                effective,
                f"v{version} differs from what the registry holds although v{newest_registered} is registered: "
                f"a published version is immutable; restore {catalog.schema(entity, version).source.name} from "
                f"version control and put the change in a new version",
            )
        )
    if check.issues:
        return check
    registered_texts = [(await registry.get_version(subject, n)).schema for n in check.registry_versions]
    names: list[tuple[str, int]] = [("registered", n) for n in check.registry_versions]
    for position, version in enumerate(check.pending):
        text = catalog.schema(entity, version).text
        chain = registered_texts + [catalog.schema(entity, v).text for v in check.pending[:position]]
        chain_names = names + [("local", v) for v in check.pending[:position]]
        reported: set[tuple[tuple[str, int], str]] = set()
        if registered_texts:
            report = await registry.test_compatibility(subject, text)
            if not report.is_compatible:
                offline = check_compatibility(text, registered_texts, effective)
                for message in _grouped(offline.problems, chain_names, reported):
                    check.issues.append(CheckIssue(version, "registry", effective, message))
                if offline.is_compatible:
                    said = "; ".join(report.messages) or "it gives no details"
                    check.issues.append(
                        CheckIssue(
                            version,
                            "registry",
                            effective,
                            f"the registry refuses it at {effective} ({said}) although the offline checker finds "
                            f"it compatible: compare with `keel schemas diff {entity} registry {version}`",
                        )
                    )
        configured = check_compatibility(text, chain, check.configured_level)
        for message in _grouped(configured.problems, chain_names, reported):
            check.issues.append(CheckIssue(version, "subjects.toml", check.configured_level, message))
    return check


async def _raise_edited_versions(registry: SchemaRegistry, catalog: Catalog, check: SubjectCheck) -> set[int]:
    """Record an issue for each local version whose registration holds another text; the versions flagged.

    A registered version is immutable, so local v`N` must equal, as parsed JSON, the text of its registration:
    - found by lookup: the registry may compare canonical forms (Apicurio drops docs), so an edited doc still
      matches; it is fine only if the texts are equal, or if another local version has exactly that text
      (the registry holds both as one version: `_note_merged_versions`);
    - not found: new or edited. Registry version numbers follow the local ones (registration goes oldest
      first) except where versions merged, so v`N` was registered as the version after the registration of the
      newest registered local version below `N`. If the registry has that version and no local version claims
      it, v`N` was registered and then edited: registering it again would add a stray version (an
      auto-registering gateway) or find nothing (every other gateway answers 503). Equal texts are a match
      the lookup missed.
    """
    texts: dict[int, Any] = {}

    async def registered_text(number: int) -> Any:
        if number not in texts:
            texts[number] = json.loads((await registry.get_version(check.subject, number)).schema)
        return texts[number]

    edited: set[int] = set()
    for version, found in sorted(check.registered.items()):
        held = await registered_text(found.version)
        if held == catalog.schema(check.entity, version).envelope:
            continue
        twins = [v for v, f in check.registered.items() if f.version == found.version and v != version]
        if any(catalog.schema(check.entity, twin).envelope == held for twin in twins):
            continue
        edited.add(version)
        check.issues.append(_edited_issue(catalog, check, version, found.version, held, matched=True))
    claimed = {found.version for found in check.registered.values()}
    for version in list(check.pending):
        below = [found.version for local, found in check.registered.items() if local < version]
        expected = max(below, default=0) + 1
        if expected not in check.registry_versions or expected in claimed:
            continue
        held = await registered_text(expected)
        if held == catalog.schema(check.entity, version).envelope:
            check.registered[version] = await registry.get_version(check.subject, expected)
            check.pending.remove(version)
            claimed.add(expected)
            continue
        edited.add(version)
        check.issues.append(_edited_issue(catalog, check, version, expected, held, matched=False))
    return edited


def _edited_issue(
    catalog: Catalog, check: SubjectCheck, version: int, registered_as: int, held: Any, *, matched: bool
) -> CheckIssue:
    schema = catalog.schema(check.entity, version)
    differences = describe_differences(held, schema.envelope)
    shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
    why = " (the registry still matches it: it compares canonical forms, which drop docs)" if matched else ""
    return CheckIssue(
        version,
        "history",
        check.effective_level,
        f"v{version} differs from registered version {registered_as} of {check.subject}{why}: {shown}. A "
        f"registered version is immutable: restore {schema.source.name} from version control and put the change "
        f"in a new version (policy, such as sensitive fields, belongs in subjects.toml)",
    )


def _note_merged_versions(check: SubjectCheck) -> None:
    """Note local versions the registry holds as one (it may compare canonical forms)."""
    by_registration: dict[int, list[int]] = {}
    for version, found in sorted(check.registered.items()):
        by_registration.setdefault(found.version, []).append(version)
    for registered_as, merged in by_registration.items():
        if len(merged) > 1:
            names = " and ".join(f"v{v}" for v in merged)
            check.notes.append(
                CheckIssue(
                    merged[-1],
                    "registry",
                    check.effective_level,
                    f"{names} are one schema to the registry (registered version {registered_as}): it compares "
                    f"canonical forms, which drop docs, defaults, enum defaults and aliases, so its checks use the "
                    f"text of registered version {registered_as}",
                )
            )


def _grouped(
    problems: list[Incompatibility], names: list[tuple[str, int]], reported: set[tuple[tuple[str, int], str]]
) -> list[str]:
    """One sentence per (direction, message), naming every version it applies to; skips and records `reported`."""
    groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for problem in problems:
        against = names[problem.other_version - 1]
        if (against, problem.message) in reported:
            continue
        reported.add((against, problem.message))
        groups.setdefault((problem.direction, problem.message), []).append(against)
    return [f"{direction} ({_versions_label(against)}): {message}" for (direction, message), against in groups.items()]


def _versions_label(versions: list[tuple[str, int]]) -> str:
    """`registered versions 1, 2; local v4`."""
    registered = [n for kind, n in versions if kind == "registered"]
    local = [n for kind, n in versions if kind == "local"]
    parts = []
    if registered:
        plural = "s" if len(registered) > 1 else ""
        parts.append(f"registered version{plural} {', '.join(map(str, registered))}")
    if local:
        parts.append("local " + ", ".join(f"v{n}" for n in local))
    return "; ".join(parts)


async def check_subjects(
    registry: SchemaRegistry, catalog: Catalog, prefix: str, entities: list[str] | None = None
) -> list[SubjectCheck]:
    """`check_subject` for every entity of the catalog (or the given ones)."""
    return [await check_subject(registry, catalog, entity, prefix) for entity in entities or catalog.entities()]


@dataclass
class RegistrationOutcome:
    """What `register_subjects` did (or would do, in a dry run) for one subject."""

    check: SubjectCheck
    registered: dict[int, int] = field(default_factory=dict)  # local version → schema id
    level_before: str | None = None
    level_after: str | None = None
    error: str | None = None
    dry_run: bool = False

    @property
    def is_ok(self) -> bool:
        """Whether the subject ends up with every version and its configured level."""
        if self.dry_run:
            return self.check.is_ok
        return self.error is None and self.check.is_ok and self.level_after == self.check.configured_level


async def _register_one(registry: SchemaRegistry, catalog: Catalog, outcome: RegistrationOutcome) -> None:
    check = outcome.check
    exists = bool(check.registry_versions)
    level_set = False
    for version in check.pending:
        if exists and not level_set:
            await registry.set_compatibility(check.configured_level, check.subject)
            level_set = True
        try:
            outcome.registered[version] = await registry.register(
                check.subject, catalog.schema(check.entity, version).text
            )
        except IncompatibleSchemaError as error:
            outcome.error = f"v{version}: {error}"
            return
        exists = True
    if not level_set:
        await registry.set_compatibility(check.configured_level, check.subject)
    outcome.level_after = await registry.get_compatibility(check.subject)


async def register_subjects(
    registry: SchemaRegistry,
    catalog: Catalog,
    prefix: str,
    *,
    dry_run: bool = False,
    skip_check: bool = False,
    entities: list[str] | None = None,
) -> list[RegistrationOutcome]:
    """Check, then register every pending version oldest → newest and set each subject's configured level.

    Nothing is registered when any check fails (unless `skip_check`, which leaves the registry the only
    judge: it refuses what its level forbids, and the refusal is reported).
    """
    checks = await check_subjects(registry, catalog, prefix, entities)
    outcomes = [RegistrationOutcome(check, level_before=check.subject_level, dry_run=dry_run) for check in checks]
    if skip_check:
        for outcome in outcomes:
            outcome.check.issues = [i for i in outcome.check.issues if i.source == "history"]
    if dry_run or not all(outcome.check.is_ok for outcome in outcomes):
        return outcomes
    for outcome in outcomes:
        await _register_one(registry, catalog, outcome)
    return outcomes
