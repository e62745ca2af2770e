"""`keel doctor`: is this deployment healthy, and if not, what to do about it.

Checks, in order: PostgreSQL (reachable, version, the schema's SQL migrations), Kafka (reachable, the brokers'
protocol, the change topics and the DLQ), the schema registry (reachable, version, each subject's level
against `schemas/subjects.toml`), the gateway and projector health endpoints when configured, consumer lag
(two readings `doctor_sample_s` apart: a projector that makes no progress while records wait is stopped or
stalled) and the dead-letter topic (records newer than `doctor_dlq_window_s`, or arriving during the
sample, mean it is growing). Every finding says what to do; any problem makes the exit code 1.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from deploy.observability.fleet import KafkaView
from deploy.observability.kafka_probe_adapter import KafkaProbe
from deploy.observability.pg_probe_adapter import PgProbe
from deploy.observability.services_probe import fetch_health, registry_version, subject_levels
from keel.errors import ConfigurationError, KeelError
from keel.settings import Settings
from producers.gateway.service import GATEWAY_SQL
from projections.sql_migrations import PROJECTOR_SQL, discover, pending
from schemas.catalog import Catalog, default_catalog
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["DoctorReport", "Finding", "Severity", "run_doctor"]

MIN_POSTGRES_MAJOR = 13  # xid8 and pg_current_xact_id() order the outbox (docs/projections.md)
_INIT_PRODUCER_ID = "InitProducerId"  # idempotent producers (KIP-98) need it


class Severity(enum.StrEnum):
    """How bad a finding is: problems fail the run, warnings are worth a look."""

    OK = "ok"
    WARN = "warn"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Finding:
    """One check's verdict and, unless all is well, what to do."""

    check: str
    severity: Severity
    summary: str
    advice: str = ""


@dataclass
class DoctorReport:
    """Every finding of one run."""

    findings: list[Finding] = field(default_factory=list)

    def add(self, check: str, severity: Severity, summary: str, advice: str = "") -> None:
        """Record a finding."""
        self.findings.append(Finding(check, severity, summary, advice))

    @property
    def problems(self) -> list[Finding]:
        """The findings that fail the run."""
        return [f for f in self.findings if f.severity is Severity.PROBLEM]

    @property
    def exit_code(self) -> int:
        """0 when nothing is a problem, else 1."""
        return 1 if self.problems else 0


def _redacted(dsn: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", dsn)


async def _check_postgres(settings: Settings, report: DoctorReport) -> PgProbe | None:
    try:
        probe = await PgProbe.connect(settings.database_url, settings.pg_schema)
    except KeelError as error:
        report.add(
            "postgresql",
            Severity.PROBLEM,
            f"cannot reach PostgreSQL at {_redacted(settings.database_url)}: {error}",
            "check KEEL_DATABASE_URL and that the server runs (`keel stack status` on the local stack)",
        )
        return None
    version = await probe.server_version()
    leading = re.match(r"\d+", version)
    major = int(leading.group(0)) if leading else 0
    if major < MIN_POSTGRES_MAJOR:
        report.add(
            "postgresql",
            Severity.PROBLEM,
            f"PostgreSQL {version} is too old",
            f"Keel needs PostgreSQL {MIN_POSTGRES_MAJOR} or newer (xid8 transaction ids order the outbox)",
        )
    else:
        report.add("postgresql", Severity.OK, f"PostgreSQL {version} reachable")
    await _check_migrations(probe, settings, report)
    return probe


async def _check_migrations(probe: PgProbe, settings: Settings, report: DoctorReport) -> None:
    applied = await probe.applied_migrations()
    if applied is None:
        report.add(
            "migrations",
            Severity.PROBLEM,
            f"schema {settings.pg_schema!r} holds no Keel tables",
            "run `keel projections migrate` (or start the projector or gateway, which migrate at start)",
        )
        return
    try:
        todo = pending(discover([PROJECTOR_SQL]), applied)
        if any(100 <= version < 200 for version in applied):  # a gateway runs on this schema: its files count too
            todo += pending(discover([GATEWAY_SQL]), applied)
    except ConfigurationError as error:
        report.add("migrations", Severity.PROBLEM, str(error), "restore the applied file; add a new migration instead")
        return
    if todo:
        names = ", ".join(m.path.name for m in todo)
        report.add(
            "migrations",
            Severity.PROBLEM,
            f"schema {settings.pg_schema!r} misses migrations: {names}",
            "run `keel projections migrate` as the schema owner, then restart the services",
        )
    else:
        report.add("migrations", Severity.OK, f"schema {settings.pg_schema!r}: {len(applied)} migrations applied")


async def _check_registry(
    settings: Settings, catalog: Catalog, client: httpx.AsyncClient, report: DoctorReport
) -> None:
    try:
        version = await registry_version(client, settings.registry_url)
    except KeelError as error:
        report.add(
            "registry",
            Severity.PROBLEM,
            f"cannot reach the schema registry at {settings.registry_url}: {error}",
            "check KEEL_REGISTRY_URL and that the registry runs; producers cannot encode new versions without it",
        )
        return
    report.add("registry", Severity.OK, f"{version} reachable at {settings.registry_url}")
    registry = ConfluentSchemaRegistry(settings.registry_url)
    try:
        levels = await subject_levels(registry, catalog, settings.topic_for)
    except KeelError as error:
        report.add("subjects", Severity.PROBLEM, f"cannot read subjects: {error}", "check the registry's logs")
        return
    finally:
        await registry.close()
    for level in levels:
        if not level.exists:
            report.add(
                "subjects",
                Severity.WARN,
                f"{level.subject} is not registered yet",
                "run `keel schemas register` (the gateway also registers missing versions at start)",
            )
        elif not level.matches:
            report.add(
                "subjects",
                Severity.PROBLEM,
                f"{level.subject} is at {level.actual or 'the registry default'}, "
                f"subjects.toml says {level.configured}",
                "run `keel schemas register`, which sets each subject's level from schemas/subjects.toml",
            )
        else:
            report.add("subjects", Severity.OK, f"{level.subject}: {level.actual}")


async def _check_endpoints(settings: Settings, client: httpx.AsyncClient, report: DoctorReport) -> None:
    if settings.gateway_url:
        answer = await fetch_health(client, settings.gateway_url.rstrip("/") + "/healthz")
        if answer.is_up:
            report.add("gateway", Severity.OK, f"gateway healthy at {settings.gateway_url}")
        else:
            said = answer.error or f"HTTP {answer.status}: {answer.body}"
            report.add(
                "gateway",
                Severity.PROBLEM,
                f"gateway at {settings.gateway_url} is not healthy ({said})",
                "start it (`keel run gateway`) or read its log; devices keep their ops and retry meanwhile",
            )
    if settings.projector_url:
        answer = await fetch_health(client, settings.projector_url.rstrip("/") + "/health")
        if answer.status is None or not answer.body.get("alive", False):
            said = answer.error or f"HTTP {answer.status}"
            report.add(
                "projector",
                Severity.PROBLEM,
                f"projector health endpoint at {settings.projector_url} is down ({said}): the projector is stopped",
                "start it (`keel run projector`) and read its log; nothing is lost, it resumes from its stored offsets",
            )
        elif not answer.body.get("ready", False):
            report.add(
                "projector",
                Severity.WARN,
                f"projector alive but not ready: {answer.body.get('waiting_on') or answer.body.get('state')}",
                "it backs off while a dependency is down; fix what `waiting_on` names",
            )
        else:
            report.add("projector", Severity.OK, f"projector ready (group {answer.body.get('group')})")


def _judge_lag(settings: Settings, first: KafkaView, second: KafkaView, sample_s: float, report: DoctorReport) -> None:
    behind = second.total_lag
    moved = second.position_total - first.position_total
    group = second.group
    members = group.members if group is not None else 0
    if behind == 0:
        report.add(
            "lag", Severity.OK, f"group {settings.consumer_group} is caught up on {len(second.partitions)} partitions"
        )
        return
    worst = max(second.partitions, key=lambda p: p.lag)
    where = f"{worst.topic}[{worst.partition}] is {worst.lag} behind"
    if moved > 0:
        rate = moved / sample_s
        severity = Severity.OK if second.total_lag < first.total_lag else Severity.WARN
        report.add(
            "lag",
            severity,
            f"{behind} records behind, projecting {rate:.1f} records/s ({where})",
            "" if severity is Severity.OK else "writes outpace the projector: add partitions and projector replicas",
        )
        return
    if members == 0:
        report.add(
            "lag",
            Severity.PROBLEM,
            f"projector STOPPED: {behind} records wait and group {settings.consumer_group} has no member ({where})",
            "start the projector (`keel run projector`); it resumes from the offsets stored in PostgreSQL",
        )
        return
    report.add(
        "lag",
        Severity.PROBLEM,
        f"projector STALLED: {behind} records wait and no position moved in {sample_s:g}s "
        f"although the group has {members} member(s) ({where})",
        "check the projector's /health (`waiting_on`) and log; its watchdog restarts a consumer stuck longer than "
        f"{settings.projector_stall_s:g}s",
    )


def _judge_dead_letters(first: KafkaView, second: KafkaView, report: DoctorReport) -> None:
    letters = second.dead_letters
    if letters is None:
        return
    before = first.dead_letters.end_offsets if first.dead_letters else {}
    arrived = sum(max(0, end - before.get(partition, end)) for partition, end in letters.end_offsets.items())
    reasons = ", ".join(f"{reason}: {count}" for reason, count in letters.by_reason.items()) or "unknown"
    if letters.recent > 0 or arrived > 0:
        report.add(
            "dlq",
            Severity.PROBLEM,
            f"dead-letter topic {letters.topic} is GROWING: {max(letters.recent, arrived)} new in the last "
            f"{letters.window_s / 60:g} min, {letters.records} in all ({reasons})",
            "read the keel-dlq-error-class/-message headers of the newest records, fix the producer that sends them, "
            "then re-produce corrected events (docs/runbooks/replay-and-rebuild.md); nothing was lost",
        )
    elif letters.records > 0:
        report.add(
            "dlq",
            Severity.WARN,
            f"{letters.records} old dead letters in {letters.topic}, none in the last {letters.window_s / 60:g} min "
            f"({reasons})",
            "review them (docs/runbooks/replay-and-rebuild.md); they stay until the topic's retention removes them",
        )
    else:
        report.add("dlq", Severity.OK, f"dead-letter topic {letters.topic} is empty")


async def _check_kafka(
    settings: Settings, catalog: Catalog, pg: PgProbe | None, sample_s: float, report: DoctorReport
) -> None:
    probe = KafkaProbe(settings)
    try:
        await probe.start()
    except KeelError as error:
        report.add(
            "kafka",
            Severity.PROBLEM,
            f"cannot reach Kafka at {settings.kafka_bootstrap}: {error}",
            "check KEEL_KAFKA_BOOTSTRAP (and the TLS/SASL settings) and that the brokers run",
        )
        return
    try:
        topics = [settings.topic_for(entity) for entity in catalog.entities()]
        stored = (await pg.view(settings.consumer_group, {})).stored_offsets if pg is not None else []
        first = await probe.view(topics, settings.consumer_group, stored, settings.doctor_dlq_window_s)
        protocol = first.protocol
        if protocol is not None and _INIT_PRODUCER_ID not in protocol.versions:
            report.add(
                "kafka",
                Severity.PROBLEM,
                f"the brokers do not offer idempotent producers ({protocol.describe()})",
                "Keel needs Kafka 0.11 or newer; upgrade the brokers",
            )
        else:
            report.add("kafka", Severity.OK, f"Kafka reachable: {protocol.describe() if protocol else 'no brokers'}")
        if first.missing_topics:
            report.add(
                "topics",
                Severity.WARN,
                f"topics not created yet: {', '.join(first.missing_topics)}",
                "start the gateway or the projector (both create the change topics and the DLQ at start)",
            )
        await asyncio.sleep(sample_s)
        stored = (await pg.view(settings.consumer_group, {})).stored_offsets if pg is not None else []
        second = await probe.view(topics, settings.consumer_group, stored, settings.doctor_dlq_window_s)
        _judge_lag(settings, first, second, sample_s, report)
        _judge_dead_letters(first, second, report)
    except KeelError as error:
        report.add("kafka", Severity.PROBLEM, f"Kafka stopped answering: {error}", "check the brokers' health")
    finally:
        await probe.close()


async def run_doctor(
    settings: Settings, *, catalog: Catalog | None = None, sample_s: float | None = None
) -> DoctorReport:
    """Run every check against the deployment `settings` describe."""
    catalog = catalog or default_catalog()
    report = DoctorReport()
    sample = settings.doctor_sample_s if sample_s is None else sample_s
    pg = await _check_postgres(settings, report)
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            steps: Sequence[Callable[[], Awaitable[None]]] = (
                lambda: _check_kafka(settings, catalog, pg, sample, report),
                lambda: _check_registry(settings, catalog, client, report),
                lambda: _check_endpoints(settings, client, report),
            )
            for step in steps:
                await step()
    finally:
        if pg is not None:
            await pg.close()
    return report
