"""The proof of a run: the checker's verdict on the evidence, and the report's figures.

`prove` gathers what every device holds, what the projection holds and what the log holds
(`deploy/verification/evidence.py`), replays the log in one process, runs the checker
(`deploy/verification/checker.py`) and computes the figures (`deploy/demo/report.py`); `print_summary`
tells it in the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from consumers.projector import migration_registry
from deploy.demo.fleet import Fleet
from deploy.demo.incidents import IncidentRecord
from deploy.demo.plan import DemoPlan
from deploy.demo.report import (
    catch_up_summary,
    contended_entities,
    example_decisions,
    hotspots,
    lag_series,
    latencies,
    percentile,
)
from deploy.demo.timeline import Sample
from deploy.verification.checker import AckedOp, DeviceDigest, Evidence, check
from deploy.verification.evidence import device_evidence, projection_digests, read_log, read_projection
from deploy.verification.replay import digests_in_versions, replay
from keel.settings import Settings
from projections.decisions import DecisionRecord
from projections.digest import empty_digest
from projections.pg_adapter import Pool, pg_errors
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrations import in_schema
from schemas.catalog import default_catalog
from schemas.registry import SchemaRegistry

__all__ = ["RunFacts", "print_summary", "prove"]


@dataclass(frozen=True)
class RunFacts:
    """What the run itself knows about how it went (the evidence comes from devices and services)."""

    run_id: str
    settings: Settings  # the run's own: its topic prefix, PostgreSQL schema and consumer group
    logs: Path
    started_wall_ms: int
    setup: dict[str, Any]
    samples: list[Sample]
    incidents: list[IncidentRecord]
    drain_stuck: list[str]
    final_phase_s: float


async def _decision_inputs(pool: Pool, schema: str) -> tuple[list[tuple[str, str, str, str]], list[DecisionRecord]]:
    sql = in_schema("SELECT tenant_id, entity_type, entity_id, field FROM {schema}.conflict_decisions", schema)
    async with pg_errors("read decisions"):
        rows = await pool.fetch(sql)
    records = await PgProjectionStore(pool, schema).decisions(limit=2000)
    return [(r["tenant_id"], r["entity_type"], r["entity_id"], r["field"]) for r in rows], records


async def prove(
    facts: RunFacts,
    plan: DemoPlan,
    *,
    fleet: Fleet,
    pool: Pool,
    registry: SchemaRegistry,
) -> tuple[dict[str, Any], list[str]]:
    """Gather the evidence, run the checker, compute the figures: the report, and the checker's lines."""
    migrations = migration_registry(facts.settings)
    catalog = default_catalog()
    devices = [device_evidence(m.device) for m in fleet.members.values()]
    acknowledged: list[AckedOp] = [op for d in devices for op in d.acknowledged]
    device_digests: list[DeviceDigest] = [digest for d in devices for digest in d.digests]
    versions: dict[str, set[int]] = {entity: {catalog.current_version(entity)} for entity in catalog.entities()}
    for digest in device_digests:
        versions[digest.entity_type].add(digest.version)
    projection = await read_projection(pool, facts.settings.pg_schema)
    projected_digests = await projection_digests(pool, facts.settings.pg_schema, versions, migrations, catalog)
    log = await read_log(facts.settings, registry, migrations, catalog=catalog)
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
    decision_rows, decision_records = await _decision_inputs(pool, facts.settings.pg_schema)
    spots = hotspots((entity_type, entity_id, field) for _, entity_type, entity_id, field in decision_rows)
    busiest = contended_entities(
        (tenant, entity_type, entity_id) for tenant, entity_type, entity_id, _ in decision_rows
    )
    examples = example_decisions(decision_records)
    pending = sum(d.pending for d in devices)
    counters = fleet.counters()
    converged = verdict.ok and pending == 0 and not facts.drain_stuck
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
        "run_id": facts.run_id,
        "plan_fingerprint": plan.fingerprint(),
        "started_at": datetime.fromtimestamp(facts.started_wall_ms / 1000, tz=UTC).isoformat(),
        "setup": facts.setup,
        "names": {
            "topic_prefix": facts.settings.topic_prefix,
            "pg_schema": facts.settings.pg_schema,
            "consumer_group": facts.settings.consumer_group,
            "logs": str(facts.logs),
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
        "sdk_stop_timeouts": sum(m.stop_timeouts for m in fleet.members.values()),
        "final_phase_s": round(facts.final_phase_s, 1),
        "drain_stuck": [_stuck_json(fleet, device_id) for device_id in facts.drain_stuck],
        "incidents": [r.as_json() for r in facts.incidents],
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
        "contended_entities": busiest,
        "example_decisions": examples,
        "checker": verdict.as_json(),
        "timeline": [s.as_json() for s in facts.samples],
        "lag": lag_series(pairs, facts.started_wall_ms),
    }
    return report, verdict.summary()


def _stuck_json(fleet: Fleet, device_id: str) -> dict[str, Any]:
    """Why a device did not drain: its sync state, what it still holds, the last error it saw."""
    status = fleet.members[device_id].device.status()
    return {
        "device_id": device_id,
        "pending": status.pending,
        "quarantined": status.quarantined,
        "last_error": status.last_error,
    }


def print_summary(console: Console, report: dict[str, Any], checker_lines: list[str]) -> None:
    """The verdict, the figures, the incidents, three decisions in words and the checker's lines."""
    verdict = "[bold green]CONVERGED[/bold green]" if report["converged"] else "[bold red]NOT CONVERGED[/bold red]"
    console.print()
    console.print(f"{verdict}: {report['devices']} devices in {report['tenants']} tenants, seed {report['seed']}")
    ops = report["ops"]
    console.print(
        f"  ops: {ops['written']} written, {report['acked_ops']} acknowledged, {report['projected_ops']} projected; "
        f"lost {report['lost']}, applied twice {report['duplicated']}"
    )
    stuck = report["drain_stuck"]
    if stuck:
        first = stuck[0]
        console.print(
            f"  [red]{len(stuck)} devices did not drain[/red] ({ops['pending_on_devices']} ops still queued); "
            f"{first['device_id']}: {first['last_error']}"
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
