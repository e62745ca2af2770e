"""`keel demo`: a fleet of offline-first devices through outages and a live schema migration, then the proof.

One run, start to end:

1. **Isolation.** A run id names the topic prefix, PostgreSQL schema and consumer group, so a run starts
   clean and touches nothing else. Subjects are registered up to each entity's stable version (task v2);
   task v3 is registered by the rollout incident.
2. **Services.** `keel run projector` and `keel run gateway` as child processes with the run's `KEEL_*`
   environment; the gateway reaches Kafka through the stack's Toxiproxy proxies.
3. **Fleet.** The plan's devices enroll, handshake and go online; each plays its part of the plan while
   the incidents run at their times; a live view shows the counters.
4. **Final phase.** Every device comes back online; the rollout cohort handshakes again; the devices drain,
   the projector catches up, the devices pull everything; their sync loops stop.
5. **Proof.** `deploy/verification` checks device digests against the projection's (in each device's
   version) and against a clean single-process replay of the log, acknowledged ops lost, ops applied
   twice, seq gaps and inversions; plus push→projected latency, catch-up times, conflicts in words.
6. **Report.** JSON and an HTML page beside it; the exit code says whether everything held.

Toxiproxy is restored (toxics removed, proxies enabled) and the services stopped whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog
from rich.console import Console

from consumers.projector import migration_registry
from deploy.demo.fleet import Fleet
from deploy.demo.html_report import write_html_report
from deploy.demo.incidents import IncidentRunner
from deploy.demo.plan import Chaos, DemoPlan, Incident, make_plan
from deploy.demo.progress import Progress
from deploy.demo.report import catch_up_summary, example_decisions, hotspots, lag_series, latencies, percentile
from deploy.demo.services import ServiceProcess, free_port
from deploy.demo.timeline import Timeline
from deploy.demo.toxiproxy import ToxiproxyControl
from deploy.verification.checker import AckedOp, DeviceDigest, Evidence, check
from deploy.verification.evidence import device_evidence, projection_digests, read_log, read_projection
from deploy.verification.replay import digests_in_versions, replay
from keel.errors import ConfigurationError, KeelError
from keel.kafka_adapter import ensure_topics
from keel.logging import configure_logging, get_logger
from keel.settings import Settings
from producers.gateway.rollout import RolloutFlag
from producers.gateway.rollout_pg_adapter import PgRolloutFlags
from projections.digest import empty_digest
from projections.pg_adapter import Pool, connect_pool, pg_errors
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import in_schema
from schemas.catalog import Catalog, default_catalog
from schemas.governance import register_subjects
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["DemoOptions", "DemoResult", "run_demo"]

_log = get_logger("demo")


@dataclass(frozen=True)
class DemoOptions:
    """What `keel demo` was asked for."""

    devices: int = 50
    tenants: int = 5
    duration_s: float = 90.0
    seed: int | None = None
    chaos: Chaos = Chaos.STANDARD
    report: Path | None = None
    writes_per_device_s: float = 0.2
    toxiproxy_url: str | None = None
    drain_timeout_s: float = 180.0


@dataclass
class DemoResult:
    """The report and the verdict."""

    report: dict[str, Any]
    exit_code: int
    html: Path | None = None


@dataclass
class _Run:
    """Names and places of one run."""

    run_id: str
    settings: Settings  # the run's own: its prefix, schema and group
    logs: Path
    enrollment_secret: str
    started_wall_ms: int = 0
    phase: str = "starting"
    loop_started: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        """Seconds since the fleet started playing."""
        return asyncio.get_running_loop().time() - self.loop_started if self.loop_started else 0.0


def _run_settings(settings: Settings) -> _Run:
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    run_id = f"{stamp}{secrets.token_hex(3)}"
    run_settings = settings.model_copy(
        update={
            "topic_prefix": f"demo-{run_id}",
            "pg_schema": f"demo_{run_id}",
            "consumer_group": f"demo-{run_id}",
        }
    )
    logs = settings.home / "demo" / run_id
    logs.mkdir(parents=True, exist_ok=True)
    return _Run(run_id, run_settings, logs, secrets.token_urlsafe(24))


def _stable_catalog(catalog: Catalog) -> Catalog:
    """The catalog without versions above each entity's stable one (what a cluster runs before a rollout)."""
    schemas = {
        entity: {v: s for v, s in versions.items() if v <= catalog.policy(entity).stable_version}
        for entity, versions in catalog.schemas.items()
    }
    return Catalog(schemas, catalog.policies, catalog.default_compatibility, catalog.root)


def _service_env(run: _Run) -> dict[str, str]:
    s = run.settings
    return {
        "KEEL_TOPIC_PREFIX": s.topic_prefix,
        "KEEL_PG_SCHEMA": s.pg_schema,
        "KEEL_CONSUMER_GROUP": s.consumer_group,
        "KEEL_DATABASE_URL": s.database_url,
        "KEEL_REGISTRY_URL": s.registry_url,
        "KEEL_LOG_LEVEL": "INFO",
        "KEEL_LOG_JSON": "true",
    }


def _projector(run: _Run) -> ServiceProcess:
    port = free_port()
    env = _service_env(run) | {
        "KEEL_KAFKA_BOOTSTRAP": run.settings.kafka_bootstrap,
        "KEEL_PROJECTOR_HEALTH_PORT": str(port),
        # Static membership (KIP-345): the restarted projector takes its partitions back at once.
        "KEEL_CONSUMER_INSTANCE_ID": f"{run.settings.consumer_group}-1",
    }
    return ServiceProcess(
        "projector", ["run", "projector"], env, run.logs / "projector.log", f"http://127.0.0.1:{port}/health"
    )


def _gateway(run: _Run, bootstrap: str) -> tuple[ServiceProcess, str]:
    port = free_port()
    env = _service_env(run) | {
        "KEEL_KAFKA_BOOTSTRAP": bootstrap,
        "KEEL_GATEWAY_ENROLLMENT_SECRET": run.enrollment_secret,
        "KEEL_GATEWAY_REGISTER_SCHEMAS": "false",  # the demo registers; the rollout adds task v3 mid-run
        "KEEL_GATEWAY_PRODUCE_TIMEOUT_S": "3",  # a cut path answers 503 after 3 s instead of 20
        "KEEL_GATEWAY_OUTBOX_POLL_S": "0.5",
        "KEEL_GATEWAY_STREAM_HEARTBEAT_S": "5",
    }
    url = f"http://127.0.0.1:{port}"
    args = ["run", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    return ServiceProcess("gateway", args, env, run.logs / "gateway.log", f"{url}/healthz"), url


class _LogsToFile:
    """Route this process's logs (the SDK's warnings during outages) to the run's log file, not the terminal."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        self._handle: IO[str] | None = None

    def __enter__(self) -> _LogsToFile:
        self._handle = self.path.open("a", encoding="utf-8")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=self._handle))
        logging.basicConfig(level=logging.INFO, stream=self._handle, format="%(message)s", force=True)
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        configure_logging(self.settings.log_level, json=self.settings.log_json)
        if self._handle is not None:
            self._handle.close()


async def _preflight(settings: Settings, registry: ConfluentSchemaRegistry) -> None:
    """Every service answers (clear errors before anything starts)."""
    await ensure_topics(settings, [])
    await registry.get_compatibility(None)


async def _register(registry: ConfluentSchemaRegistry, catalog: Catalog, prefix: str) -> list[str]:
    outcomes = await register_subjects(registry, catalog, prefix)
    problems = [o.error or "; ".join(str(i) for i in o.check.issues) for o in outcomes if not o.is_ok]
    if problems:
        raise ConfigurationError(f"registering the run's subjects failed: {problems}")
    return [f"{o.check.subject} v{v}" for o in outcomes for v in o.registered]


def _rollout(
    run: _Run, pool: Pool, registry: ConfluentSchemaRegistry, fleet: Fleet, plan: DemoPlan
) -> Callable[[Incident], Awaitable[tuple[str, dict[str, Any]]]]:
    async def roll_out(incident: Incident) -> tuple[str, dict[str, Any]]:
        tenant = str(incident.param("tenant"))
        entity = str(incident.param("entity", "task"))
        registered = await _register(registry, default_catalog(), run.settings.topic_prefix)
        await PgRolloutFlags(pool, run.settings.pg_schema).set_flag(RolloutFlag(entity, (tenant,)))
        cohort = [d.device_id for d in plan.devices if d.tenant_id == tenant]
        versions = await fleet.upgrade_now(cohort)
        moved = sorted(d for d, v in versions.items() if v == incident.param("version", 3))
        figures = {"tenant": tenant, "registered": registered, "upgraded_now": moved, "online_cohort": len(versions)}
        detail = (
            f"registered {', '.join(registered) or 'nothing new'}; rollout flag: {entity} v3 for tenant {tenant}; "
            f"{len(moved)} of its {len(versions)} online devices re-handshook onto v3 at once, "
            "the rest move at their next handshake"
        )
        return detail, figures

    return roll_out


async def _wait_projected(pool: Pool, schema: str, acknowledged: int, timeout_s: float) -> int:
    """Until the projection holds at least `acknowledged` ops (or the timeout); how many it holds."""
    sql = in_schema("SELECT count(*) FROM {schema}.applied_ops", schema)
    deadline = time.monotonic() + timeout_s
    while True:
        async with pg_errors("count projected ops"):
            projected = int(await pool.fetchval(sql))
        if projected >= acknowledged or time.monotonic() > deadline:
            return projected
        await asyncio.sleep(0.5)


async def _decision_inputs(pool: Pool, schema: str) -> tuple[list[tuple[str, str, str]], list[Any]]:
    rows = await pool.fetch(in_schema("SELECT entity_type, entity_id, field FROM {schema}.conflict_decisions", schema))
    records = await PgProjectionStore(pool, schema).decisions(limit=2000)
    return [(r["entity_type"], r["entity_id"], r["field"]) for r in rows], records


async def run_demo(options: DemoOptions, settings: Settings, console: Console) -> DemoResult:  # noqa: PLR0915 - the script
    """Run the demo end to end; see the module docstring."""
    seed = options.seed if options.seed is not None else secrets.randbelow(1_000_000)
    plan = make_plan(
        seed,
        devices=options.devices,
        tenants=options.tenants,
        duration_s=options.duration_s,
        chaos=options.chaos,
        writes_per_device_s=options.writes_per_device_s,
    )
    run = _run_settings(settings)
    began = time.monotonic()
    console.print(
        f"[bold]keel demo[/bold] run {run.run_id}: {len(plan.devices)} devices in {len(plan.tenants)} tenants, "
        f"{plan.duration_s:g}s, chaos {plan.chaos.value}, seed {seed} (plan {plan.fingerprint()[:12]})"
    )
    console.print(
        f"  topics {run.settings.topic_prefix}.*, PostgreSQL schema {run.settings.pg_schema}, logs {run.logs}"
    )
    registry = ConfluentSchemaRegistry(run.settings.registry_url)
    toxiproxy: ToxiproxyControl | None = None
    pool: Pool | None = None
    services: list[ServiceProcess] = []
    fleet: Fleet | None = None
    with _LogsToFile(run.logs / "demo.log", settings), tempfile.TemporaryDirectory(prefix="keel-demo-") as stores:
        try:
            await _preflight(run.settings, registry)
            pool = await connect_pool(run.settings.database_url, max_size=4)
            bootstrap = run.settings.kafka_bootstrap
            if plan.chaos is not Chaos.NONE:
                url = options.toxiproxy_url or f"http://127.0.0.1:{settings.toxiproxy_port}"
                toxiproxy = ToxiproxyControl(url, f"keel-demo-{run.run_id}")
                bootstrap = await toxiproxy.proxied_bootstrap()
                catalog = _stable_catalog(default_catalog())
            else:
                catalog = default_catalog()
            run.figures["registered"] = await _register(registry, catalog, run.settings.topic_prefix)
            projector = _projector(run)
            gateway, gateway_url = _gateway(run, bootstrap)
            services = [projector, gateway]
            console.print("  starting the projector and the gateway …")
            await projector.start()
            await gateway.start()
            run.figures["gateway"] = {"url": gateway_url, "kafka_bootstrap": bootstrap}
            fleet = Fleet(
                plan, gateway_url, enrollment_secret=run.enrollment_secret, folder=Path(stores), elapsed=run.elapsed
            )
            console.print(f"  enrolling {len(plan.devices)} devices …")
            await fleet.enroll()
            result = await _play(
                run,
                plan,
                options,
                fleet=fleet,
                pool=pool,
                registry=registry,
                projector=projector,
                gateway=gateway,
                toxiproxy=toxiproxy,
                console=console,
            )
            report = await _verify(run, plan, fleet=fleet, pool=pool, registry=registry, played=result, console=console)
        finally:
            if toxiproxy is not None:
                with contextlib.suppress(KeelError):
                    await toxiproxy.aclose()
            if fleet is not None:
                await fleet.close()
            for service in reversed(services):
                await service.stop()
            if pool is not None:
                await pool.close()
            await registry.close()
    report["wall_s"] = round(time.monotonic() - began, 1)
    html = None
    if options.report is not None:
        options.report.parent.mkdir(parents=True, exist_ok=True)
        options.report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        html = write_html_report(report, options.report.with_suffix(".html"))
    ok = bool(report["converged"]) and report["lost"] == 0 and report["duplicated"] == 0
    return DemoResult(report, 0 if ok else 1, html)


@dataclass
class _Played:
    timeline: Timeline
    incidents: IncidentRunner
    drain_stuck: list[str]
    final_phase_s: float
    projected_at_end: int


async def _play(
    run: _Run,
    plan: DemoPlan,
    options: DemoOptions,
    *,
    fleet: Fleet,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    projector: ServiceProcess,
    gateway: ServiceProcess,
    toxiproxy: ToxiproxyControl | None,
    console: Console,
) -> _Played:
    """Phases 3 and 4: play the plan with its incidents, then bring everyone back and drain."""
    incidents = IncidentRunner(
        plan,
        projector=projector,
        gateway=gateway,
        toxiproxy=toxiproxy,
        fleet=fleet,
        schema_rollout=_rollout(run, pool, registry, fleet, plan),
        elapsed=run.elapsed,
    )
    timeline = Timeline(
        fleet, pool, run.settings.pg_schema, run.elapsed, lambda: [r.incident.kind.value for r in incidents.active()]
    )
    progress = Progress(
        console, lambda: timeline.latest, lambda: run.phase, devices=len(plan.devices), duration_s=plan.duration_s
    )
    stop = asyncio.Event()
    run.loop_started = asyncio.get_running_loop().time()
    run.started_wall_ms = int(time.time() * 1000)
    run.phase = "running"
    watchers = [asyncio.create_task(timeline.run(stop)), asyncio.create_task(progress.run(stop))]
    try:
        await asyncio.gather(fleet.play(), incidents.run())
        remaining = plan.duration_s - run.elapsed()
        if remaining > 0:
            await asyncio.sleep(remaining)
        if toxiproxy is not None:
            await toxiproxy.restore()
        for service in (projector, gateway):
            if not service.is_running():
                await service.start()  # a restart that failed during an incident: the final phase needs it
        run.phase = "final phase: everyone back online"
        final_began = time.monotonic()
        await fleet.bring_all_online()
        if plan.rollout_tenant is not None:
            # Devices of the cohort that were away during the rollout handshake again now they are back.
            await fleet.upgrade_now([d.device_id for d in plan.devices if d.tenant_id == plan.rollout_tenant])
        run.phase = "draining"
        stuck = await fleet.drain(options.drain_timeout_s)
        acknowledged = sum(len(device_evidence(m.device).acknowledged) for m in fleet.members.values())
        run.phase = "projector catching up"
        projected = await _wait_projected(pool, run.settings.pg_schema, acknowledged, options.drain_timeout_s)
        run.phase = "devices pulling the last changes"
        stuck = sorted(set(stuck) | set(await fleet.drain(options.drain_timeout_s)))
        fleet.watch_versions()
        await fleet.settle_watches()
        stuck = sorted(set(stuck) | set(await fleet.drain(options.drain_timeout_s)))
        await fleet.stop_syncing()
        await timeline.sample()
        run.phase = "verifying"
        return _Played(timeline, incidents, stuck, time.monotonic() - final_began, projected)
    finally:
        stop.set()
        await asyncio.gather(*watchers, return_exceptions=True)


async def _verify(
    run: _Run,
    plan: DemoPlan,
    *,
    fleet: Fleet,
    pool: Pool,
    registry: ConfluentSchemaRegistry,
    played: _Played,
    console: Console,
) -> dict[str, Any]:
    """Phase 5 and the report's content."""
    migrations = migration_registry(run.settings)
    catalog = default_catalog()
    devices = [device_evidence(m.device) for m in fleet.members.values()]
    acknowledged: list[AckedOp] = [op for d in devices for op in d.acknowledged]
    device_digests: list[DeviceDigest] = [digest for d in devices for digest in d.digests]
    versions: dict[str, set[int]] = {entity: {catalog.current_version(entity)} for entity in catalog.entities()}
    for digest in device_digests:
        versions[digest.entity_type].add(digest.version)
    projection = await read_projection(pool, run.settings.pg_schema)
    projected_digests = await projection_digests(pool, run.settings.pg_schema, versions, migrations, catalog)
    log = await read_log(run.settings, registry, migrations, catalog=catalog)
    clean = replay(log.events)
    replay_digests = digests_in_versions(
        {entity: clean.visible_rows(entity) for entity in versions}, versions, migrations, catalog
    )
    consumed = {d.device_id: d.quarantined for d in devices}
    for device_id, seqs in projection.consumed_without_event.items():
        consumed[device_id] = consumed.get(device_id, frozenset()) | seqs
    verdict = check(
        Evidence(
            acknowledged=acknowledged,
            applied=projection.applied,
            consumed_without_event=consumed,
            feed_event_ids=projection.feed_event_ids,
            log=log.entries,
            device_digests=device_digests,
            projection_digests=projected_digests,
            replay_digests=replay_digests,
        )
    )
    pairs = latencies(log.accepted_at_ms, projection.applied_at_ms)
    values = [float(latency) for _, latency in pairs]
    reconnects = [r for m in fleet.members.values() for r in m.reconnects]
    catch_up = catch_up_summary(reconnects)
    decision_rows, decision_records = await _decision_inputs(pool, run.settings.pg_schema)
    spots = hotspots(decision_rows)
    examples = example_decisions(decision_records)
    pending = sum(d.pending for d in devices)
    counters = fleet.counters()
    converged = verdict.ok and pending == 0 and not played.drain_stuck
    per_tenant: dict[str, Any] = {}
    for tenant in plan.tenants:
        members = [d for d in devices if d.tenant_id == tenant]
        per_tenant[tenant] = {
            "devices": len(members),
            "digests": {
                f"{entity}.v{version}": projected_digests.get((tenant, entity, version))
                for entity in sorted(versions)
                for version in sorted(versions[entity])
                if (tenant, entity, version) in projected_digests
            },
            "device_versions": {d.device_id: {x.entity_type: x.version for x in d.digests} for d in members},
            "devices_matching": sum(
                all(projected_digests.get(x.key, empty_digest()) == x.digest for x in d.digests) for d in members
            ),
        }
    report: dict[str, Any] = {
        "converged": converged,
        "devices": len(plan.devices),
        "tenants": len(plan.tenants),
        "acked_ops": len(acknowledged),
        "projected_ops": verdict.applied,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "conflicts": projection.decisions,
        "p50_ms": percentile(values, 0.5),
        "p99_ms": percentile(values, 0.99),
        "max_catch_up_s": catch_up["max_catch_up_s"],
        "seed": plan.seed,
        "chaos": plan.chaos.value,
        "duration_s": plan.duration_s,
        "run_id": run.run_id,
        "plan_fingerprint": plan.fingerprint(),
        "started_at": datetime.fromtimestamp(run.started_wall_ms / 1000, tz=UTC).isoformat(),
        "setup": run.figures,
        "names": {
            "topic_prefix": run.settings.topic_prefix,
            "pg_schema": run.settings.pg_schema,
            "consumer_group": run.settings.consumer_group,
            "logs": str(run.logs),
        },
        "ops": {
            "written": counters.written,
            "acknowledged": len(acknowledged),
            "projected": verdict.applied,
            "pending_on_devices": pending,
            "quarantined": sum(len(d.quarantined) for d in devices),
            "log_records": len(log.entries),
            "log_undecodable": log.undecodable,
            "redeliveries_in_log": clean.redeliveries,
            "contended_writes_planned": plan.contended_writes,
        },
        "latency_ms": {
            "p50": percentile(values, 0.5),
            "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99),
            "max": max(values, default=0.0),
            "samples": len(values),
        },
        "catch_up": catch_up,
        "retries": counters.retries,
        "handshakes": counters.handshakes,
        "entities_repaired": counters.repaired,
        "final_phase_s": round(played.final_phase_s, 1),
        "drain_stuck": played.drain_stuck,
        "incidents": [r.as_json() for r in played.incidents.records],
        "rollout": {
            "tenant": plan.rollout_tenant,
            "version_changes": [
                {
                    "device_id": c.device_id,
                    "entity_type": c.entity_type,
                    "from": c.before,
                    "to": c.after,
                    "at_s": round(c.at_s, 2),
                }
                for c in fleet.version_changes
            ],
            "task_versions": {
                d.device_id: next((x.version for x in d.digests if x.entity_type == "task"), None) for d in devices
            },
        },
        "per_tenant": per_tenant,
        "hotspots": [s.as_json() for s in spots],
        "example_decisions": examples,
        "checker": verdict.as_json(),
        "timeline": [s.as_json() for s in played.timeline.samples],
        "lag": lag_series(pairs, run.started_wall_ms),
    }
    _print_summary(console, report, verdict.summary())
    return report


def _print_summary(console: Console, report: dict[str, Any], checker_lines: list[str]) -> None:
    verdict = "[bold green]CONVERGED[/bold green]" if report["converged"] else "[bold red]NOT CONVERGED[/bold red]"
    console.print()
    console.print(f"{verdict}: {report['devices']} devices in {report['tenants']} tenants, seed {report['seed']}")
    ops = report["ops"]
    console.print(
        f"  ops: {ops['written']} written, {report['acked_ops']} acknowledged, {report['projected_ops']} projected; "
        f"lost {report['lost']}, applied twice {report['duplicated']}"
    )
    console.print(
        f"  push→projected latency p50 {report['p50_ms']:.0f} ms, p99 {report['p99_ms']:.0f} ms; "
        f"longest catch-up {report['max_catch_up_s']:.1f}s"
    )
    longest = report["catch_up"]["longest_offline"]
    if longest:
        caught = "did not catch up" if longest["catch_up_s"] is None else f"caught up in {longest['catch_up_s']:.1f}s"
        console.print(f"  longest offline: {longest['device_id']} away {longest['offline_s']:.0f}s, {caught}")
    for incident in report["incidents"]:
        mark = "[green]ok[/green]" if incident["ok"] else "[red]FAILED[/red]"
        console.print(
            f"  incident at {incident['started_at_s']}s {mark}: {incident['description']} — {incident['detail']}"
        )
    console.print(f"  conflicts resolved: {report['conflicts']}; three of them in words:")
    for example in report["example_decisions"]:
        console.print("    " + example.replace("\n", "\n    "), highlight=False)
    for line in checker_lines:
        console.print(f"  checker: {line}", highlight=False)
