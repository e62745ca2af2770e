"""Rehearse a migration before rollout: run it over a representative dataset and report what happens.

Input is a JSON-lines file (each line a payload of the source version, or an object with `payload`,
`schema_version` and optional `changed_fields`) or N generated payloads. Every record is validated in its
version, migrated with the shared `MigrationRegistry` (disabled steps stay disabled), validated in the
target version and migrated back, so the report shows throughput, failures with their reasons, the
cautions the target version raises, and which fields do not survive the round trip.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keel.errors import ConfigurationError, KeelError
from schemas.catalog import EntitySchema
from schemas.domain_migrations import format_due, parse_due
from schemas.migrations import MigrationRegistry
from schemas.validation import validate_payload

__all__ = ["SimulationRecord", "SimulationReport", "generate_records", "read_jsonl", "simulate"]

_CHUNK = 10_000
_EXAMPLES = 5
_WORDS = ("buy", "milk", "call", "Ana", "fix", "bug", "write", "report", "plan", "trip", "review", "ü", "日本")
# Free-text due dates as users type them: absolute dates in several forms, relative phrases, noise.
_DUE_SAMPLES = (
    "2025-07-01",
    "2025-07-01T09:30:00Z",
    "1 Jul 2025",
    "July 4, 2025",
    "15/08/2025",
    "tomorrow",
    "next friday",
    "asap",
    "",
    None,
)
_FIELD_SAMPLES: dict[str, tuple[Any, ...]] = {"due": _DUE_SAMPLES}
_MILLIS_RANGE = (
    int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000),
    int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000),
)


@dataclass(frozen=True)
class SimulationRecord:
    """One input record: where it came from, its version, payload and changed fields (or why it is unusable)."""

    line: int
    version: int
    payload: dict[str, Any] | None
    changed_fields: tuple[str, ...] = ()
    error: str | None = None


@dataclass
class SimulationReport:
    """What a rehearsal found."""

    entity: str
    to_version: int
    records: int = 0
    migrated: int = 0
    failed: int = 0
    migrate_seconds: float = 0.0
    total_seconds: float = 0.0
    failure_reasons: Counter[str] = field(default_factory=Counter)
    failure_examples: list[str] = field(default_factory=list)
    cautions: Counter[str] = field(default_factory=Counter)  # field → records with a caution on it
    caution_examples: dict[str, str] = field(default_factory=dict)
    not_round_trip: Counter[str] = field(default_factory=Counter)  # field → records whose value did not return
    steps: Counter[str] = field(default_factory=Counter)  # step name → times applied
    source_versions: Counter[int] = field(default_factory=Counter)

    @property
    def throughput(self) -> float:
        """Records migrated per second (migration only, validation excluded)."""
        return self.migrated / self.migrate_seconds if self.migrate_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "entity": self.entity,
            "to_version": self.to_version,
            "source_versions": {str(k): v for k, v in sorted(self.source_versions.items())},
            "records": self.records,
            "migrated": self.migrated,
            "failed": self.failed,
            "migrate_seconds": round(self.migrate_seconds, 6),
            "total_seconds": round(self.total_seconds, 6),
            "throughput_per_s": round(self.throughput, 1),
            "failure_reasons": dict(self.failure_reasons),
            "failure_examples": self.failure_examples,
            "cautions": dict(self.cautions),
            "caution_examples": self.caution_examples,
            "not_round_trip": dict(self.not_round_trip),
            "steps": dict(self.steps),
        }

    def lines(self) -> list[str]:
        """Human-readable report."""
        versions = ", ".join(f"v{v} x{n}" for v, n in sorted(self.source_versions.items())) or "none"
        out = [
            f"{self.entity}: {self.records} records ({versions}) → v{self.to_version}",
            (
                f"  migrated     {self.migrated} ok, {self.failed} failed in {self.migrate_seconds:.3f} s "
                f"({self.throughput:,.0f} records/s; {self.total_seconds:.3f} s with validation and round trip)"
            ),
            "  steps        " + (", ".join(f"{k} x{v}" for k, v in sorted(self.steps.items())) or "none"),
        ]
        for reason, count in self.failure_reasons.most_common():
            out.append(f"  failed       {count} x {reason}")
        out.extend(f"    e.g. {example}" for example in self.failure_examples)
        if not self.cautions:
            out.append(f"  cautions     none: v{self.to_version} shows every value")
        for name, count in self.cautions.most_common():
            out.append(f"  caution      {name}: {count} records, e.g. {self.caution_examples[name]}")
        lost = ", ".join(f"{k} ({v})" for k, v in self.not_round_trip.most_common()) or "none"
        out.append(f"  not restored by migrating back: {lost}")
        return out


def read_jsonl(path: Path, default_version: int) -> Iterator[SimulationRecord]:
    """Records of a JSON-lines file; unusable lines become records carrying their error (counted as failures)."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(f"{path}: cannot read: {error.strerror}") from error
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                document = json.loads(raw)
            except json.JSONDecodeError as error:
                yield SimulationRecord(number, default_version, None, error=f"invalid JSON: {error.msg}")
                continue
            if not isinstance(document, dict):
                yield SimulationRecord(number, default_version, None, error="not a JSON object")
            elif "payload" in document and "schema_version" in document:
                yield _envelope_record(number, document)
            else:
                yield SimulationRecord(number, default_version, document)


def _envelope_record(number: int, document: dict[str, Any]) -> SimulationRecord:
    version, payload, changed = document["schema_version"], document["payload"], document.get("changed_fields", [])
    if not isinstance(version, int) or not isinstance(payload, dict | None) or not isinstance(changed, list):
        return SimulationRecord(number, 0, None, error="schema_version must be an int, payload an object")
    return SimulationRecord(number, version, payload, tuple(str(name) for name in changed))


def _value(avro_type: Any, rng: random.Random, depth: int = 0) -> Any:  # noqa: PLR0911 - one return per type
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"] if depth > 2 else avro_type
        return _value(rng.choice(branches), rng, depth + 1)
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if avro_type.get("logicalType") in ("timestamp-millis", "local-timestamp-millis"):
            return rng.randint(*_MILLIS_RANGE)
        if kind == "enum":
            return rng.choice(avro_type["symbols"])
        if kind == "array":
            return [_value(avro_type["items"], rng, depth + 1) for _ in range(rng.randint(0, 3))]
        if kind == "map":
            return {rng.choice(_WORDS): _value(avro_type["values"], rng, depth + 1) for _ in range(rng.randint(0, 3))}
        if kind in ("record", "error"):
            return {f["name"]: _value(f["type"], rng, depth + 1) for f in avro_type["fields"]}
        return _value(kind, rng, depth)
    simple: dict[str, Callable[[], Any]] = {
        "null": lambda: None,
        "boolean": lambda: rng.random() < 0.5,
        "int": lambda: rng.randint(0, 3),
        "long": lambda: rng.randint(0, 2**40),
        "float": lambda: round(rng.uniform(-100, 100), 2),
        "double": lambda: rng.uniform(-1e6, 1e6),
        "string": lambda: " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 4))),
        "bytes": lambda: rng.randbytes(rng.randint(0, 8)),
    }
    if avro_type not in simple:
        raise ConfigurationError(f"cannot generate values of type {avro_type!r}")
    return simple[avro_type]()


def generate_records(schema: EntitySchema, count: int, seed: int = 1) -> Iterator[SimulationRecord]:
    """`count` representative payloads of one version (seeded, so a rehearsal can be repeated exactly)."""
    rng = random.Random(seed)
    for number in range(1, count + 1):
        payload = {}
        for spec in schema.fields:
            samples = _FIELD_SAMPLES.get(spec.name)
            payload[spec.name] = rng.choice(samples) if samples else _value(spec.avro_type, rng)
        yield SimulationRecord(number, schema.version, _in_step(payload))


def _in_step(payload: dict[str, Any]) -> dict[str, Any]:
    """Keep the example domain's deprecated `due` and its `due_at` as v3 writers leave them, not random pairs."""
    if "due" in payload and "due_at" in payload:
        payload["due_at"] = parse_due(payload["due"])
        if payload["due_at"] is not None:
            payload["due"] = format_due(payload["due_at"])
    return payload


def _chunks(records: Iterable[SimulationRecord]) -> Iterator[list[SimulationRecord]]:
    chunk: list[SimulationRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _fail(report: SimulationReport, record: SimulationRecord, reason: str, detail: str) -> None:
    report.failed += 1
    report.failure_reasons[reason] += 1
    if len(report.failure_examples) < _EXAMPLES:
        report.failure_examples.append(f"record {record.line}: {detail}")


def simulate(
    records: Iterable[SimulationRecord], entity: str, to_version: int, registry: MigrationRegistry
) -> SimulationReport:
    """Run the migrations over `records` and report; a failing record is counted, never stops the run."""
    catalog = registry.catalog
    if to_version not in catalog.versions(entity):
        raise ConfigurationError(f"{entity} has no version {to_version}; known: {catalog.versions(entity)}")
    report = SimulationReport(entity, to_version)
    started = time.perf_counter()
    for chunk in _chunks(records):
        valid = [record for record in chunk if _admit(report, registry, entity, record)]
        before = Counter(registry.performed)
        moved: list[tuple[SimulationRecord, Any]] = []
        tick = time.perf_counter()
        for record in valid:
            try:
                result = registry.migrate(entity, record.payload, record.changed_fields, record.version, to_version)
            except Exception as error:  # noqa: BLE001 - a rehearsal reports a crashing step instead of stopping
                moved.append((record, error))
            else:
                moved.append((record, result))
        report.migrate_seconds += time.perf_counter() - tick
        report.steps.update(Counter(registry.performed) - before)
        for record, result in moved:
            _check_result(report, registry, entity, record, result)
    report.total_seconds = time.perf_counter() - started
    return report


def _admit(report: SimulationReport, registry: MigrationRegistry, entity: str, record: SimulationRecord) -> bool:
    """Count the record; True if it is a valid payload of a known version (else it is counted as failed)."""
    report.records += 1
    report.source_versions[record.version] += 1
    versions = registry.catalog.versions(entity)
    if record.error is not None:
        _fail(report, record, "unreadable input", record.error)
    elif record.version not in versions:
        _fail(report, record, "unknown source version", f"{entity} has no version {record.version}")
    elif record.payload is None:
        _fail(report, record, "no payload", "a DELETE has nothing to migrate")
    else:
        try:
            validate_payload(entity, record.version, record.payload, record.changed_fields, registry.catalog)
        except KeelError as error:
            _fail(report, record, "invalid in its source version", str(error))
        else:
            return True
    return False


def _check_result(
    report: SimulationReport, registry: MigrationRegistry, entity: str, record: SimulationRecord, result: Any
) -> None:
    if isinstance(result, Exception):
        _fail(report, record, "migration raised", f"{type(result).__name__}: {result}")
        return
    try:
        validate_payload(entity, report.to_version, result.payload, result.changed_fields, registry.catalog)
    except KeelError as error:
        _fail(report, record, f"invalid in v{report.to_version} after migration", str(error))
        return
    report.migrated += 1
    for caution in dict.fromkeys(result.cautions):
        name = caution.split(":", 1)[0]
        report.cautions[name] += 1
        report.caution_examples.setdefault(name, caution)
    back = registry.migrate(entity, result.payload, result.changed_fields, report.to_version, record.version)
    assert record.payload is not None  # records without a payload fail before migrating
    assert back.payload is not None
    complete = {
        spec.name: spec.default for spec in registry.catalog.schema(entity, record.version).fields if spec.has_default
    } | record.payload
    for name, value in complete.items():
        if back.payload.get(name) != value:
            report.not_round_trip[name] += 1
