"""R8 — device clocks skewed by up to ±5 minutes, and ops delivered out of order: convergence, HLC order.

Devices of two tenants run with wall clocks skewed from -5 to +5 minutes (their hybrid logical clocks read
the skewed clock). Each round, every device edits the same shared tasks while offline — nobody sees
anybody else's writes, so every pair of writes to a field is a conflict — then the devices come back one
at a time in an order drawn against their clocks (the most skewed-ahead first, or the most behind first),
each pushing and pulling before the next connects, so the log receives the ops in an order unrelated to
their clocks. A few writes happen online in between.

Checks: every device converges on the projection's state (digests in each device's version), the
projection equals a clean replay of the log, nothing lost or applied twice — and every recorded conflict
decision names as winner the write with the greater (HLC, rank, device, event) stamp
(`projections.conflict_rules.WriteStamp`, read back from the log).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from deploy.chaos.context import ChaosRun
from deploy.chaos.fleet import ChaosFleet, open_service_rig
from deploy.chaos.scenario import ScenarioOutcome, register
from keel.errors import TransientError
from projections.conflict_rules import WriteStamp
from projections.pg_adapter import pg_errors
from projections.sql_migrations import in_schema
from schemas.envelope import ChangeEvent

__all__ = ["clock_skew"]

SKEWS_MS = (-300_000, -170_000, -45_000, 0, 60_000, 190_000, 300_000)
SHARED = 4
_DECISIONS = (
    "SELECT decision_id, rule, field, winner_event_id, loser_event_id FROM {schema}.conflict_decisions "
    "WHERE rule <> 'manual-override'"
)


def _edit(device: Any, rng: Any, n: int) -> None:
    entity = f"shared-{rng.randrange(SHARED)}"
    if rng.random() < 0.1 and device.get("task", entity) is not None:
        device.delete("task", entity)
        return
    fields: dict[str, Any] = {"title": f"{device.device_id[:6]} says {n}"}
    if rng.random() < 0.5:
        fields["priority"] = rng.randrange(4)
    device.upsert("task", entity, fields)


async def _sync(device: Any) -> None:
    """One explicit round (push everything, pull until caught up), retried through transient failures."""
    for attempt in range(10):
        try:
            await device.sync()
        except TransientError:
            if attempt == 9:
                raise
            await asyncio.sleep(0.5)
        else:
            return


@register(
    "R8",
    "Skewed clocks, out-of-order delivery",
    "with device clocks skewed by up to ±5 minutes and ops reaching the log in an order unrelated to their "
    "clocks: every device converges on the projection (= a clean replay), and every conflict decision's "
    "winner has the greater (HLC, device) stamp",
    quick="7 devices in 2 tenants, 3 offline rounds",
    full="14 devices in 2 tenants, 12 offline rounds",
)
async def clock_skew(run: ChaosRun) -> ScenarioOutcome:
    """Run R8 (module docstring)."""
    rig = await open_service_rig(run)
    fleet = ChaosFleet(run, rig.url, run.enrollment_secret)
    run.on_cleanup(fleet.close)
    count = int(run.pick(len(SKEWS_MS), 2 * len(SKEWS_MS)))
    for n in range(count):
        await fleet.enroll(f"tenant-{n % 2}", skew_ms=SKEWS_MS[n % len(SKEWS_MS)] + run.rng.randrange(-2_000, 2_000))
    for device in fleet.devices:
        await device.sync_loop.handshake()
    orders: list[str] = []
    writes = 0
    for round_number in range(int(run.pick(3, 12))):
        for _ in range(int(run.pick(4, 6))):  # offline edits: everyone writes without seeing the others
            for device in fleet.devices:
                _edit(device, run.rng, writes)
                writes += 1
            await asyncio.sleep(0.05)
        ahead_first = round_number % 2 == 0
        order = sorted(fleet.devices, key=lambda d: fleet.skews_ms[d.device_id], reverse=ahead_first)
        orders.append("ahead first" if ahead_first else "behind first")
        for device in order:  # out-of-order delivery: one device at a time, against (or along) the clocks
            await _sync(device)
            _edit(device, run.rng, writes)  # and one online write, seen by whoever pulls next
            writes += 1
            await _sync(device)
    for device in fleet.devices:
        await device.go_online()
    stuck, caught_up = await rig.settle(fleet, run.pick(90, 180))
    verdict = await rig.verdict(fleet.evidence())
    report = verdict.report
    events: dict[str, ChangeEvent] = {s.event.event_id: s.event for s in verdict.log.events}
    async with pg_errors("read decisions"):
        decisions = await rig.pool.fetch(in_schema(_DECISIONS, rig.settings.pg_schema))
    wrong: list[str] = []
    rules: Counter[str] = Counter()
    for decision in decisions:
        rules[decision["rule"]] += 1
        winner, loser = events.get(decision["winner_event_id"]), events.get(decision["loser_event_id"])
        if winner is None or loser is None:
            wrong.append(f"{decision['decision_id'][:12]}: an event is not in the log")
        elif not WriteStamp.of(winner) > WriteStamp.of(loser):
            wrong.append(
                f"{decision['decision_id'][:12]} ({decision['rule']}, {decision['field']}): winner "
                f"{WriteStamp.of(winner).as_list()[:4]} < loser {WriteStamp.of(loser).as_list()[:4]}"
            )
    outcome = ScenarioOutcome.judged(report, report.acknowledged)
    outcome.check("every device drained", not stuck and fleet.pending() == 0, f"stuck: {stuck or 'none'}")
    outcome.check("the projector caught up", caught_up is not None, f"{caught_up or 0:.1f} s after the devices drained")
    outcome.check(
        "devices converged on the projection", not report.diverged, f"{report.digests_compared} digest comparisons"
    )
    outcome.check("conflicts were decided", len(decisions) > 0, f"{len(decisions)} decisions: {dict(rules)}")
    outcome.check(
        "every decision's winner has the greater (HLC, device) stamp",
        not wrong,
        "; ".join(wrong[:5]) or f"all {len(decisions)}",
    )
    wins: Counter[str] = Counter(str(d["winner_event_id"]) for d in decisions)
    by_skew: dict[str, int] = {}
    for event_id, won in wins.items():
        event = events.get(event_id)
        if event is not None:
            key = f"{fleet.skews_ms.get(event.device_id, 0) // 1000:+d}s"
            by_skew[key] = by_skew.get(key, 0) + won
    outcome.figures.update(
        {
            "decisions_checked": len(decisions),
            "decisions_by_rule": dict(rules),
            "clock_skews_ms": sorted(fleet.skews_ms.values()),
            "wins_by_clock_skew": dict(sorted(by_skew.items(), key=lambda item: int(item[0][:-1]))),
            "delivery_orders": orders,
            "writes": writes,
            "sdk_stop_timeouts": fleet.stop_timeouts,
        }
    )
    return outcome
