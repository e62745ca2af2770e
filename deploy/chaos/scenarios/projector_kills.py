"""R1 — the projector SIGKILLed at random points over a long stream: nothing lost, nothing applied twice.

Half the events wait in the log before the first projector starts; the rest arrive while projectors are
killed one after another. Each round starts a `keel run projector` and ends it with one kind of kill,
drawn from the run's seed:

- `in-transaction`: a failpoint SIGKILLs the process inside its N-th batch transaction, every write done,
  before COMMIT (PostgreSQL rolls the open transaction back when the socket drops);
- `after-store-commit`: SIGKILL after the N-th batch committed in PostgreSQL, before its Kafka offset
  commit (the next owner must trust PostgreSQL's offsets, not the group's);
- `mid-rebalance`: a second member joins; the first dies inside its revoke callback, mid-rebalance;
- `external`: SIGKILL from outside at a random moment of the process's life.

Then one last projector catches up and drains. The checker compares every acknowledged op with the
projection, counts applications in `applied_ops` and the change feed, and compares the projection's
digests with a clean single-process replay of the log (copies included).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

from deploy.chaos.context import ChaosRun, exited, start_armed
from deploy.chaos.log_rig import LogRig, open_log_rig
from deploy.chaos.probes import applied_count, idle_in_transaction, wait_caught_up
from deploy.chaos.scenario import ScenarioOutcome, register
from deploy.demo.services import ServiceProcess
from keel.errors import ServiceUnavailableError

__all__ = ["projector_kills"]

KINDS = ("in-transaction", "after-store-commit", "mid-rebalance", "external")
WEIGHTS = (3, 3, 1, 2)
SESSION_TIMEOUT_MS = "6000"  # a member that died mid-rebalance is evicted after this


@dataclass
class _Kills:
    """What the rounds did."""

    by_kind: Counter[str] = field(default_factory=Counter)
    rounds: list[dict[str, object]] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # seconds from spawn to healthy

    def interrupted(self) -> int:
        """Kills that landed with the stream unfinished (something applied, more available)."""
        return sum(1 for r in self.rounds if 0 < int(str(r["applied"])) < int(str(r["produced"])))


async def _feed(rig: LogRig, events: int, rate_per_s: float) -> None:
    """Produce `events` more events at about `rate_per_s` (the stream keeps arriving while kills happen)."""
    chunk = 1_000
    began = time.monotonic()
    written = 0
    while written < events:
        batch = list(rig.workload.events(min(chunk, events - written)))
        records = await rig.producer.encode(batch)
        await rig.producer.write(batch, records)
        if rig.workload.rng.random() < 0.2:  # a producer retry after a lost ack: the log holds copies
            await rig.producer.write_copies(records[: rig.workload.rng.randrange(1, 50)])
        written += len(batch)
        ahead = written / rate_per_s - (time.monotonic() - began)
        if ahead > 0:
            await asyncio.sleep(ahead)


def _projector(run: ChaosRun, name: str, member: str, failpoint: str = "") -> ServiceProcess:
    return run.projector(
        name,
        KEEL_CONSUMER_INSTANCE_ID=f"{run.settings.consumer_group}-{member}",  # static membership (KIP-345)
        KEEL_CONSUMER_SESSION_TIMEOUT_MS=SESSION_TIMEOUT_MS,
        KEEL_PROJECTOR_FAILPOINTS=failpoint,
        KEEL_LOG_LEVEL="WARNING",
    )


def _kind(run: ChaosRun, number: int, order: list[str]) -> str:
    """The kind of round `number`: every kind once in a seeded order first, then drawn by weight."""
    return order[number - 1] if number <= len(order) else run.rng.choices(KINDS, WEIGHTS)[0]


async def _end(run: ChaosRun, first: ServiceProcess, number: int, kind: str, kills: _Kills) -> str:
    """End a running projector with one kind of kill; the kind that actually landed."""
    if kind == "external":
        await asyncio.sleep(run.rng.uniform(0.5, 3.5))
        await first.kill()
        return kind
    if kind == "mid-rebalance":
        # Let it own partitions and make progress, then a second member joins: the first dies while revoking.
        await asyncio.sleep(run.rng.uniform(0.5, 2.0))
        second = _projector(run, f"projector-{number}b", "b")
        kills.starts.append(await second.start())
        landed = kind
        if not await exited(first, 30.0):
            landed = "external"  # the rebalance never reached it (a timing we did not get): kill it anyway
            await first.kill()
        await asyncio.sleep(run.rng.uniform(0.5, 2.0))
        await second.kill()
        kills.by_kind["external"] += 1  # the second member's end
        return landed
    if not await exited(first, 40.0):
        await first.kill()
        return "external"  # fewer batches than N were left to apply
    return kind


async def _round(run: ChaosRun, rig: LogRig, number: int, kind: str, kills: _Kills) -> None:
    """Start a projector and end it with one kind of kill."""
    at = run.rng.randint(3, 12) if run.quick else run.rng.randint(10, 60)
    failpoint = f"{kind}=kill@{at}" if kind in ("in-transaction", "after-store-commit") else ""
    if kind == "mid-rebalance":
        failpoint = "mid-rebalance=kill@1"
    first = _projector(run, f"projector-{number}", "a", failpoint)
    started = await start_armed(first) if failpoint else await first.start()
    landed = kind  # as is when the failpoint fired before the health endpoint answered (during the start)
    if started is not None:
        kills.starts.append(started)
        landed = await _end(run, first, number, kind, kills)
    kills.by_kind[landed] += 1
    kills.rounds.append(
        {
            "kind": landed,
            "failpoint": failpoint,
            "applied": await applied_count(rig.pool, rig.settings.pg_schema),
            "produced": len(rig.producer.acknowledged),
        }
    )


@register(
    "R1",
    "Projector SIGKILL at random points",
    "0 lost, 0 duplicated, projection digest = clean replay after kills inside the transaction, after the "
    "PostgreSQL commit and before the Kafka commit, mid-rebalance, and at random moments",
    quick="50,000 events, 8 kill rounds",
    full="1,000,000 events, kills until 90 % is projected",
)
async def projector_kills(run: ChaosRun) -> ScenarioOutcome:
    """Run R1 (module docstring)."""
    total = int(run.pick(50_000, 1_000_000))
    rig = await open_log_rig(run)
    backlog = total // 2
    began = time.monotonic()
    await rig.producer.write(list(rig.workload.events(backlog)))
    produce_s = time.monotonic() - began
    feed = asyncio.create_task(_feed(rig, total - backlog, rate_per_s=run.pick(2_500, 2_000)), name="r1-feed")
    kills = _Kills()
    max_rounds = int(run.pick(8, 400))
    order = run.rng.sample(KINDS, len(KINDS))
    try:
        number = 0
        while number < max_rounds:
            number += 1
            await _round(run, rig, number, _kind(run, number, order), kills)
            if not run.quick and kills.rounds[-1]["applied"] >= 0.9 * total:  # type: ignore[operator]
                break
        await feed
        final = _projector(run, "projector-final", "a")
        kills.starts.append(await final.start())
        caught_up_s = await wait_caught_up(rig.pool, rig.settings, rig.topics, timeout_s=run.pick(300, 3_600))
        await final.stop()
        final_exit = final.process.returncode if final.process is not None else None
    finally:
        if not feed.done():
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError, ServiceUnavailableError):
                await feed
    idle = await idle_in_transaction(rig.pool, rig.application_name)
    verdict = await rig.verdict()
    report = verdict.report
    outcome = ScenarioOutcome.judged(report, len(rig.producer.acknowledged))
    kill_total = sum(kills.by_kind.values())
    outcome.check(
        "caught up after the kills", caught_up_s is not None, f"{caught_up_s or 0:.1f}s for the last projector"
    )
    outcome.check("the last projector drained cleanly", final_exit == 0, f"exit code {final_exit}")
    outcome.check(
        "every kind of kill happened",
        all(kills.by_kind[k] > 0 for k in KINDS),
        ", ".join(f"{k} {kills.by_kind[k]}" for k in KINDS),
    )
    outcome.check(
        "kills landed mid-stream",
        kills.interrupted() >= len(kills.rounds) // 2,
        f"{kills.interrupted()} of {kill_total}",
    )
    outcome.check("no session left idle in transaction", idle == 0, f"{idle} sessions")
    outcome.check("every op applied", report.applied == total, f"{report.applied} of {total}")
    outcome.figures.update(
        {
            "kills": kill_total,
            "kills_by_kind": dict(kills.by_kind),
            "kills_mid_stream": kills.interrupted(),
            "rounds": kills.rounds,
            "projector_start_s": {"median": _median(kills.starts), "max": round(max(kills.starts), 2)},
            "backlog_produce_s": round(produce_s, 1),
            "final_catch_up_s": round(caught_up_s or 0.0, 1),
            "log_records": verdict.log_records,
            "redeliveries_in_log": verdict.replay.redeliveries,
            "decisions_in_replay": len(verdict.replay.decisions),
        }
    )
    return outcome


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 2) if ordered else 0.0
