"""`keel schemas`: inspect, compare, check, register and rehearse the event schemas.

Exit codes: 0 fine, 1 incompatible / refused / failed records, 2 unusable input (invalid JSON or Avro,
unknown level, entity or version, unreachable registry).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from keel.errors import ConfigurationError, KeelError, ServiceUnavailableError
from keel.settings import get_settings
from schemas.catalog import COMPATIBILITY_LEVELS, SCHEMAS_ROOT, Catalog
from schemas.compatibility import check_compatibility, parse_avro
from schemas.diff import diff_schemas
from schemas.gate import run_gate
from schemas.governance import (
    RegistrationOutcome,
    SubjectCheck,
    check_subjects,
    register_subjects,
    subject_name,
)
from schemas.registry import SchemaRegistry
from schemas.version_lock import LOCK_FILE, VersionLock, fingerprint

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="Event schemas: list, show, diff, compat, check, register, simulate, gate, lock.", no_args_is_help=True
)

EXIT_INCOMPATIBLE = 1
EXIT_UNUSABLE = 2

CatalogOption = Annotated[
    Path, typer.Option("--catalog", help="Schemas folder (avro/ and subjects.toml)", show_default=False)
]
PrefixOption = Annotated[str | None, typer.Option("--prefix", help="Topic prefix (default: KEEL_TOPIC_PREFIX)")]
RegistryOption = Annotated[str | None, typer.Option("--registry-url", help="Registry URL (default: KEEL_REGISTRY_URL)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _fail(message: str, code: int = EXIT_UNUSABLE) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _catalog(root: Path) -> Catalog:
    try:
        return Catalog.load(root)
    except ConfigurationError as error:
        _fail(str(error))


def _prefix(prefix: str | None) -> str:
    return prefix or get_settings().topic_prefix


@asynccontextmanager
async def _connect(url: str | None) -> AsyncIterator[SchemaRegistry]:
    from schemas.registry_adapter import ConfluentSchemaRegistry

    registry = ConfluentSchemaRegistry(url or get_settings().registry_url)
    try:
        yield registry
    finally:
        await registry.close()


def _run(url: str | None, work: Callable[[SchemaRegistry], Awaitable[T]]) -> T:
    """Run `work` against the registry; unreachable registry or unusable input → exit 2 with the reason."""

    async def main() -> T:
        async with _connect(url) as registry:
            return await work(registry)

    try:
        return asyncio.run(main())
    except ServiceUnavailableError as error:
        _fail(f"{error} (is the registry running? `keel stack status`)")
    except ConfigurationError as error:
        _fail(str(error))


# ------------------------------------------------------------------------------------------------ list


@app.command("list")
def list_subjects(
    catalog_root: CatalogOption = SCHEMAS_ROOT,
    prefix: PrefixOption = None,
    registry_url: RegistryOption = None,
    show_all: Annotated[bool, typer.Option("--all", help="Also list every other subject in the registry")] = False,
    as_json: JsonOption = False,
) -> None:
    """Subjects of the local catalog, their versions, which are registered, and the levels in force."""
    catalog = _catalog(catalog_root)
    chosen = _prefix(prefix)

    async def work(registry: SchemaRegistry) -> tuple[list[SubjectCheck], list[str]]:
        checks = await check_subjects(registry, catalog, chosen)
        known = {check.subject for check in checks}
        others = [s for s in await registry.subjects() if s not in known and (show_all or s.startswith(f"{chosen}."))]
        return checks, others

    checks, others = _run(registry_url, work)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "subjects": [_check_dict(check) for check in checks],
                    "registry_only": others,
                },
                indent=2,
            )
        )
        return
    for check in checks:
        own = check.subject_level or f"inherits {check.effective_level}"
        typer.echo(
            f"{check.subject}  (entity {check.entity}; level: registry {own}, subjects.toml "
            f"{check.configured_level}; registry versions {check.registry_versions or 'none'})"
        )
        for version in catalog.versions(check.entity):
            found = check.registered.get(version)
            state = f"registered as version {found.version}, id {found.schema_id}" if found else "not registered"
            typer.echo(f"  v{version}  {state}")
    for subject in others:
        typer.echo(f"{subject}  (registry only: not in the local catalog)")


def _check_dict(check: SubjectCheck) -> dict[str, Any]:
    return {
        "entity": check.entity,
        "subject": check.subject,
        "configured_level": check.configured_level,
        "subject_level": check.subject_level,
        "effective_level": check.effective_level,
        "registry_versions": check.registry_versions,
        "registered": {str(v): {"version": r.version, "id": r.schema_id} for v, r in check.registered.items()},
        "pending": check.pending,
        "issues": [
            {"version": i.version, "source": i.source, "level": i.level, "message": i.message} for i in check.issues
        ],
        "notes": [n.message for n in check.notes],
    }


# ------------------------------------------------------------------------------------------------ show


def _entity_of(name: str, catalog: Catalog, prefix: str) -> str | None:
    if name in catalog.schemas:
        return name
    for entity in catalog.entities():
        if name in (subject_name(prefix, entity), f"{prefix}.{entity}.changes"):
            return entity
    return None


@app.command()
def show(
    subject: Annotated[str, typer.Argument(help="An entity (task) or a subject (<prefix>.task.changes-value)")],
    *,
    version: Annotated[int | None, typer.Option("--version", "-v", help="Version (default: newest)")] = None,
    from_registry: Annotated[bool, typer.Option("--registry", help="Show the registered schema")] = False,
    payload_only: Annotated[bool, typer.Option("--payload", help="Only the entity's payload record")] = False,
    catalog_root: CatalogOption = SCHEMAS_ROOT,
    prefix: PrefixOption = None,
    registry_url: RegistryOption = None,
) -> None:
    """One schema version: from the local catalog, or from the registry (`--registry`, or any other subject)."""
    catalog = _catalog(catalog_root)
    chosen = _prefix(prefix)
    entity = _entity_of(subject, catalog, chosen)
    if entity is not None and not from_registry:
        try:
            schema = catalog.schema(entity, version)
        except ConfigurationError as error:
            _fail(str(error))
        typer.echo(f"// {entity} v{schema.version} ({schema.source}); subject {subject_name(chosen, entity)}")
        typer.echo(json.dumps(schema.payload if payload_only else schema.envelope, indent=2))
        return
    name = subject_name(chosen, entity) if entity is not None else subject
    found = _run(registry_url, lambda registry: registry.get_version(name, version))
    document = json.loads(found.schema)
    if payload_only:
        document = _payload_of(document)
    typer.echo(f"// {name} version {found.version} (id {found.schema_id}) from the registry")
    typer.echo(json.dumps(document, indent=2))


def _payload_of(document: dict[str, Any]) -> Any:
    for spec in document.get("fields", []):
        if spec.get("name") == "payload" and isinstance(spec.get("type"), list):
            return next((b for b in spec["type"] if b != "null"), spec["type"])
    return document


# ------------------------------------------------------------------------------------------------ diff


@app.command()
def diff(
    refs: Annotated[
        list[str],
        typer.Argument(
            help="ENTITY OLD NEW, each version a number, `registry` (latest registered) or `registry:N`; "
            "or OLD.avsc NEW.avsc",
            show_default=False,
        ),
    ],
    catalog_root: CatalogOption = SCHEMAS_ROOT,
    prefix: PrefixOption = None,
    registry_url: RegistryOption = None,
) -> None:
    """Field-level differences between two versions, then their compatibility in both directions."""
    if len(refs) == 2:
        old_text, new_text = (_read_file(Path(ref), what) for ref, what in zip(refs, ("old", "new"), strict=True))
        labels = (refs[0], refs[1])
    elif len(refs) == 3:
        catalog = _catalog(catalog_root)
        entity = _entity_of(refs[0], catalog, _prefix(prefix))
        if entity is None:
            _fail(f"unknown entity {refs[0]!r}; known: {', '.join(catalog.entities())}")
        old_text, old_label = _resolve_ref(refs[1], entity, catalog, _prefix(prefix), registry_url)
        new_text, new_label = _resolve_ref(refs[2], entity, catalog, _prefix(prefix), registry_url)
        labels = (old_label, new_label)
    else:
        _fail("diff takes ENTITY OLD NEW (e.g. `task 2 3`, `task registry 3`) or OLD.avsc NEW.avsc")
    try:
        changes = diff_schemas(old_text, new_text)
        backward = check_compatibility(new_text, [old_text], "BACKWARD")
        forward = check_compatibility(new_text, [old_text], "FORWARD")
    except ConfigurationError as error:
        _fail(str(error))
    typer.echo(f"{labels[0]} → {labels[1]}: {len(changes)} change(s)")
    width = max((len(change.path) for change in changes), default=0)
    for change in changes:
        sign = change.describe()[0]
        typer.echo(f"  {sign} {change.path:<{width}}  {change.kind}: {change.detail}")
    for name, result in (("BACKWARD (new reads old)", backward), ("FORWARD (old reads new)", forward)):
        typer.echo(f"{name}: {'compatible' if result.is_compatible else 'INCOMPATIBLE'}")
        for problem in result.problems:
            typer.echo(f"  - {problem.message}")


def _read_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        _fail(f"{what} schema {path}: cannot read: {error.strerror}")


def _resolve_ref(ref: str, entity: str, catalog: Catalog, prefix: str, url: str | None) -> tuple[str, str]:
    if ref.isdigit():
        try:
            return catalog.schema(entity, int(ref)).text, f"{entity} v{ref}"
        except ConfigurationError as error:
            _fail(str(error))
    if ref == "registry" or ref.startswith("registry:"):
        number = ref.partition(":")[2]
        if number and not number.isdigit():
            _fail(f"bad version reference {ref!r}: use registry or registry:N")
        subject = subject_name(prefix, entity)
        found = _run(url, lambda registry: registry.get_version(subject, int(number) if number else None))
        return found.schema, f"{subject} version {found.version} (registry)"
    _fail(f"bad version reference {ref!r}: use a number, registry or registry:N")


# ------------------------------------------------------------------------------------------------ compat


@app.command()
def compat(
    level: Annotated[str, typer.Option("--level", help=f"One of {', '.join(COMPATIBILITY_LEVELS)}")],
    new: Annotated[Path, typer.Option("--new", help="The new schema (.avsc)")],
    previous: Annotated[
        list[Path] | None, typer.Option("--previous", help="Previous schemas, oldest first (repeat the option)")
    ] = None,
) -> None:
    """Offline check of NEW against PREVIOUS at a Confluent level; exit 0 compatible, 1 incompatible, 2 bad input."""
    olds = previous or []
    texts = [_read_file(path, f"previous #{i}") for i, path in enumerate(olds, start=1)]
    new_text = _read_file(new, "the new")
    try:
        parse_avro(new_text, what=f"the new schema {new}")
        for i, (path, text) in enumerate(zip(olds, texts, strict=True), start=1):
            parse_avro(text, what=f"previous schema #{i} {path}")
        result = check_compatibility(new_text, texts, level)
    except ConfigurationError as error:
        _fail(str(error))
    compared_paths = olds if result.level.endswith("_TRANSITIVE") else olds[-1:]
    compared = ", ".join(str(path) for path in compared_paths) or "nothing"
    if result.is_compatible:
        typer.echo(f"compatible at {result.level}: {new} against {compared}")
        return
    typer.echo(f"INCOMPATIBLE at {result.level}: {new} against {compared}")
    for problem in result.problems:
        typer.echo(f"  - {problem.direction} ({olds[problem.other_version - 1]}): {problem.message}")
        typer.echo(f"      rule broken: {problem.rule}")
    raise typer.Exit(EXIT_INCOMPATIBLE)


# ------------------------------------------------------------------------------------------------ gate


def _lock(root: Path) -> VersionLock | None:
    try:
        return VersionLock.read(root / LOCK_FILE)
    except ConfigurationError as error:
        _fail(str(error))


@app.command()
def gate(catalog_root: CatalogOption = SCHEMAS_ROOT) -> None:
    """CI gate: pinned versions unchanged (registered.lock.json), every version compatible with its predecessors."""
    catalog = _catalog(catalog_root)
    lock = _lock(catalog_root)
    try:
        results = run_gate(catalog)
    except ConfigurationError as error:
        _fail(str(error))
    for result in results:
        for line in result.lines():
            typer.echo(line)
    changed = lock.problems(catalog) if lock is not None else []
    for problem in changed:
        typer.echo(f"{problem.entity} v{problem.version}: CHANGED AFTER REGISTRATION")
        typer.echo(f"    {problem.message}")
    if lock is None:
        typer.echo(f"note: no {LOCK_FILE} in {catalog_root}: registered versions are not pinned (`keel schemas lock`)")
    elif unpinned := lock.unpinned(catalog):
        names = ", ".join(f"{s.entity} v{s.version}" for s in unpinned)
        typer.echo(f"note: not pinned yet: {names} (`keel schemas lock` once registered)")
    failed = [r for r in results if not r.is_compatible]
    if failed:
        typer.echo(f"schema gate: {len(failed)} incompatible version(s)", err=True)
    if changed:
        typer.echo(f"schema gate: {len(changed)} registered version(s) changed (see {LOCK_FILE})", err=True)
    if failed or changed:
        raise typer.Exit(EXIT_INCOMPATIBLE)
    typer.echo(f"schema gate: {len(results)} version(s) compatible")


@app.command()
def lock(catalog_root: CatalogOption = SCHEMAS_ROOT) -> None:
    """Pin every version not yet in registered.lock.json; refuses (exit 1) when a pinned version changed."""
    catalog = _catalog(catalog_root)
    current = _lock(catalog_root) or VersionLock()
    changed = current.problems(catalog)
    if changed:
        for problem in changed:
            typer.echo(f"{problem.entity} v{problem.version}: {problem.message}")
        typer.echo(f"lock: nothing written, {len(changed)} pinned version(s) changed", err=True)
        raise typer.Exit(EXIT_INCOMPATIBLE)
    added = current.unpinned(catalog)
    if not added:
        typer.echo(f"lock: every version is pinned already ({catalog_root / LOCK_FILE})")
        return
    current.extended(catalog).write(catalog_root / LOCK_FILE)
    for schema in added:
        typer.echo(f"  pinned {schema.entity} v{schema.version}  sha256 {fingerprint(schema)}")
    typer.echo(f"lock: {len(added)} version(s) pinned in {catalog_root / LOCK_FILE}")


# ------------------------------------------------------------------------------------------------ check / register


def _print_check(check: SubjectCheck, catalog: Catalog) -> None:
    own = check.subject_level or f"inherits {check.effective_level}"
    typer.echo(f"{check.entity}  {check.subject}  (registry level {own}; subjects.toml {check.configured_level})")
    for version in catalog.versions(check.entity):
        found = check.registered.get(version)
        issues = check.issues_of(version)
        if found is not None:
            typer.echo(f"  v{version}  registered as version {found.version} (id {found.schema_id})")
            for issue in issues:
                typer.echo(f"      - CHANGED SINCE [{issue.source}] {issue.message}")
        elif not issues:
            typer.echo(f"  v{version}  ok: compatible, not registered yet")
        else:
            typer.echo(f"  v{version}  REFUSED:")
            for issue in issues:
                typer.echo(f"      - [{issue.source}, {issue.level}] {issue.message}")
    for note in check.notes:
        typer.echo(f"  note: {note.message}")


@app.command()
def check(
    catalog_root: CatalogOption = SCHEMAS_ROOT,
    prefix: PrefixOption = None,
    registry_url: RegistryOption = None,
    entity: Annotated[list[str] | None, typer.Option("--entity", help="Only these entities")] = None,
) -> None:
    """Every local version against the live registry (its compatibility API), explained per incompatibility."""
    catalog = _catalog(catalog_root)
    chosen = _prefix(prefix)
    only = _entities(catalog, entity)
    checks = _run(registry_url, lambda registry: check_subjects(registry, catalog, chosen, only))
    for result in checks:
        _print_check(result, catalog)
    refused = sum(len(result.issues) for result in checks)
    if refused:
        typer.echo(f"check: {refused} incompatibilit{'y' if refused == 1 else 'ies'}", err=True)
        raise typer.Exit(EXIT_INCOMPATIBLE)
    typer.echo("check: every local version can be registered")


def _entities(catalog: Catalog, chosen: list[str] | None) -> list[str] | None:
    for name in chosen or []:
        if name not in catalog.schemas:
            _fail(f"unknown entity {name!r}; known: {', '.join(catalog.entities())}")
    return chosen or None


@app.command()
def register(
    *,
    catalog_root: CatalogOption = SCHEMAS_ROOT,
    prefix: PrefixOption = None,
    registry_url: RegistryOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and show the plan; change nothing")] = False,
    skip_check: Annotated[
        bool, typer.Option("--skip-check", help="Let the registry alone judge (when the offline check disagrees)")
    ] = False,
    entity: Annotated[list[str] | None, typer.Option("--entity", help="Only these entities")] = None,
) -> None:
    """The submission path: check, register every version oldest → newest, set each subject's level."""
    catalog = _catalog(catalog_root)
    chosen = _prefix(prefix)
    only = _entities(catalog, entity)
    outcomes = _run(
        registry_url,
        lambda registry: register_subjects(
            registry, catalog, chosen, dry_run=dry_run, skip_check=skip_check, entities=only
        ),
    )
    blocked = not all(o.check.is_ok for o in outcomes)
    for outcome in outcomes:
        _print_outcome(outcome, catalog, blocked)
    if blocked:
        typer.echo("register: nothing registered, the check failed (see above)", err=True)
        raise typer.Exit(EXIT_INCOMPATIBLE)
    failed = [o for o in outcomes if not o.is_ok]
    if failed:
        typer.echo(f"register: {len(failed)} subject(s) failed", err=True)
        raise typer.Exit(EXIT_INCOMPATIBLE)
    typer.echo("register: dry run, nothing changed" if dry_run else "register: done")


def _print_outcome(outcome: RegistrationOutcome, catalog: Catalog, blocked: bool) -> None:
    check = outcome.check
    if blocked or not check.is_ok:
        _print_check(check, catalog)
        return
    typer.echo(f"{check.entity}  {check.subject}")
    for version in catalog.versions(check.entity):
        if version in check.registered:
            typer.echo(f"  v{version}  already registered (id {check.registered[version].schema_id})")
        elif outcome.dry_run:
            typer.echo(f"  v{version}  would register")
        elif version in outcome.registered:
            typer.echo(f"  v{version}  registered (id {outcome.registered[version]})")
    if outcome.error is not None:
        typer.echo(f"  the registry refused {outcome.error}")
    before = outcome.level_before or "inherited"
    if outcome.dry_run:
        typer.echo(f"  level: {before} → {check.configured_level} (would set)")
    else:
        typer.echo(f"  level: {before} → {outcome.level_after} (subjects.toml: {check.configured_level})")


# ------------------------------------------------------------------------------------------------ simulate


@app.command()
def simulate(
    entity: Annotated[str, typer.Argument(help="Entity type, e.g. task")],
    *,
    input_file: Annotated[
        Path | None, typer.Option("--input", help="JSON lines: payloads, or {schema_version, payload, ...}")
    ] = None,
    generate: Annotated[int | None, typer.Option("--generate", help="Generate N payloads instead", min=1)] = None,
    from_version: Annotated[int, typer.Option("--from-version", help="Version of the payloads / generated")] = 1,
    to_version: Annotated[int | None, typer.Option("--to-version", help="Target (default: newest)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated dataset")] = 1,
    catalog_root: CatalogOption = SCHEMAS_ROOT,
    as_json: JsonOption = False,
) -> None:
    """Rehearse a migration: throughput, failures, cautions and fields lost; exit 1 if any record fails."""
    from schemas.domain_migrations import build_registry
    from schemas.simulate import generate_records, read_jsonl
    from schemas.simulate import simulate as run_simulation

    catalog = _catalog(catalog_root)
    if (input_file is None) == (generate is None):
        _fail("give exactly one of --input FILE or --generate N")
    try:
        registry = build_registry(catalog)
        target = catalog.current_version(entity) if to_version is None else to_version
        records = (
            read_jsonl(input_file, from_version)
            if input_file is not None
            else generate_records(catalog.schema(entity, from_version), generate or 0, seed)
        )
        report = run_simulation(records, entity, target, registry)
    except KeelError as error:
        _fail(str(error))
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.lines():
            typer.echo(line)
    if report.failed:
        raise typer.Exit(EXIT_INCOMPATIBLE)
