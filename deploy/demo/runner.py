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
import json
import logging
import secrets
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog
from rich.console import Console

from deploy.demo.fleet import FeedHead, Fleet
from deploy.demo.html_report import write_html_report
from deploy.demo.incidents import IncidentRunner
from deploy.demo.plan import Chaos, DemoPlan, Incident, make_plan
from deploy.demo.progress import Progress
from deploy.demo.proof import RunFacts, print_summary, prove
from deploy.demo.services import ServiceProcess, free_port
from deploy.demo.timeline import Timeline
from deploy.demo.toxiproxy import ToxiproxyControl
from deploy.verification.evidence import device_evidence
from keel.errors import ConfigurationError, KeelError
from keel.kafka_adapter import ensure_topics
from keel.logging import configure_logging, get_logger
from keel.settings import Settings
from producers.gateway.rollout import RolloutFlag
from producers.gateway.rollout_pg_adapter import PgRolloutFlags
from projections.pg_adapter import Pool, connect_pool, pg_errors
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
    drain_timeout_s: float = 180.0  # the whole final phase: drain, projector catch-up, last pulls


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


def _feed_head(pool: Pool, schema: str) -> FeedHead:
    """The cursor of the newest outbox row a device may read now (its tenant's feed and its own notices)."""
    sql = in_schema(
        "SELECT tx::text || '.' || pos FROM {schema}.outbox WHERE tenant_id = $1 "
        "AND (device_id IS NULL OR device_id = $2) ORDER BY tx DESC, pos DESC LIMIT 1",
        schema,
    )

    async def head(tenant_id: str, device_id: str) -> str:
        async with pg_errors("read the feed head"):
            found = await pool.fetchval(sql, tenant_id, device_id)
        return str(found or "")

    return head


def _dump_tasks(path: Path) -> None:
    """`kill -USR1 <pid>`: write what every asyncio task of the run is waiting for (a run that seems stuck)."""
    with path.open("a", encoding="utf-8") as out:
        out.write(f"---- asyncio tasks at {datetime.now(UTC).isoformat()} ----\n")
        for task in asyncio.all_tasks():
            task.print_stack(limit=15, file=out)


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
                plan,
                gateway_url,
                enrollment_secret=run.enrollment_secret,
                folder=Path(stores),
                elapsed=run.elapsed,
                feed_head=_feed_head(pool, run.settings.pg_schema),
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
            facts = RunFacts(
                run_id=run.run_id,
                settings=run.settings,
                logs=run.logs,
                started_wall_ms=run.started_wall_ms,
                setup=run.figures,
                samples=result.timeline.samples,
                incidents=result.incidents.records,
                drain_stuck=result.drain_stuck,
                final_phase_s=result.final_phase_s,
            )
            report, checker_lines = await prove(facts, plan, fleet=fleet, pool=pool, registry=registry)
            print_summary(console, report, checker_lines)
        finally:
            if toxiproxy is not None:
                try:
                    await toxiproxy.aclose()
                except KeelError as error:  # say so loudly: the shared proxies may be left degraded
                    console.print(
                        f"[red]could not restore Toxiproxy ({error}); check `curl {toxiproxy.api_url}/proxies`"
                    )
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
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks, run.logs / "tasks.txt")
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
        deadline = time.monotonic() + options.drain_timeout_s

        def left() -> float:
            return max(5.0, deadline - time.monotonic())

        run.phase = "draining"
        stuck = await fleet.drain(left())
        acknowledged = sum(len(device_evidence(m.device).acknowledged) for m in fleet.members.values())
        run.phase = "projector catching up"
        projected = await _wait_projected(pool, run.settings.pg_schema, acknowledged, left())
        run.phase = "devices pulling the last changes"
        stuck = sorted(set(stuck) | set(await fleet.drain(left())))
        fleet.watch_versions()
        await fleet.settle_watches(min(30.0, left()))
        stuck = sorted(set(stuck) | set(await fleet.drain(left())))
        await fleet.stop_syncing()
        await timeline.sample()
        run.phase = "verifying"
        return _Played(timeline, incidents, stuck, time.monotonic() - final_began, projected)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        stop.set()
        await asyncio.gather(*watchers, return_exceptions=True)
