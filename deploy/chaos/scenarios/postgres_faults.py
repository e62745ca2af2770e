"""R5 — PostgreSQL faults under a projector at work: nothing lost or applied twice, no session left behind.

The shared PostgreSQL serves everyone on the machine, so it is never restarted; its faults are played on
the run's own paths instead:

1. **Terminated sessions.** `pg_terminate_backend` of every session of the run's projector (by its
   `application_name`) at random moments while events stream in.
2. **A restart, emulated.** The projector reaches PostgreSQL through a Toxiproxy proxy of the run's own:
   the proxy is disabled (every connection cut, new ones refused) and the projector's backends are
   terminated server-side — what a restart looks like from the client — then enabled again seconds later.
3. **Cancellation mid-transaction.** What the projector's watchdog does to a hung batch: a task applying
   a batch (`PgProjectionStore.apply_batch`, the projector's store) on a shared pool is cancelled at a
   random moment — mostly inside the transaction — and the batch retried on the same pool, as the
   runtime would. In a schema of its own, so its dedup rows never meet the projector's.
4. **A real restart** (`full` size only, which `make test-long` runs alone): a dedicated PostgreSQL
   server of the run (`deploy/local/postgres_server.py`, its own port and folder) is restarted with
   `pg_ctl stop -m fast` / `start` under a second projector.

Checks: the checker's verdict on each projection (nothing lost, nothing applied twice, projection = clean
replay), no session idle in transaction once things settle, the projectors never restarted their process
and recovered after each fault (time until `applied_ops` grows again), the cancelled batches applied
exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from deploy.chaos.context import ChaosRun, wait_until
from deploy.chaos.log_rig import LogRig, open_log_rig
from deploy.chaos.probes import applied_count, health, idle_in_transaction, terminate_sessions, wait_caught_up
from deploy.chaos.proxies import OwnProxy, dsn_through
from deploy.chaos.scenario import ScenarioOutcome, register
from deploy.chaos.verdict import Verdict
from deploy.chaos.workload import SyntheticWorkload
from deploy.demo.services import ServiceProcess, free_port
from deploy.verification.replay import digests_in_versions, replay
from keel.errors import FencedError, TransientError
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.pg_adapter import Pool, connect_pool
from projections.pg_admin_adapter import PgAdmin
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrator_adapter import migrate

__all__ = ["postgres_faults"]

RECOVERY_LIMIT_S = 30.0
CANCEL_LIMIT_S = 2.0  # a cancelled batch must be over by then (the watchdog's restart waits for it)


@dataclass
class _Faults:
    """What was done to PostgreSQL and how long the projector took to move on each time."""

    done: list[dict[str, Any]] = field(default_factory=list)

    def recoveries(self, kind: str) -> list[float]:
        """Recovery times (s) of one kind of fault (None = never recovered counts as infinity)."""
        return [
            float(f["recovery_s"]) if f["recovery_s"] is not None else float("inf")
            for f in self.done
            if f["kind"] == kind
        ]


async def _stream(rig: LogRig, stop: asyncio.Event, rate_per_s: float) -> None:
    while not stop.is_set():
        await rig.write_next(int(rate_per_s / 5))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def _recovery(rig: LogRig, since: int, timeout_s: float) -> float | None:
    """Seconds until the projection holds more ops than `since` (the projector moved on)."""

    async def grew() -> bool:
        return await applied_count(rig.pool, rig.settings.pg_schema) > since

    return await wait_until(grew, timeout_s=timeout_s, every_s=0.1)


async def _terminate(run: ChaosRun, rig: LogRig, faults: _Faults) -> None:
    await asyncio.sleep(run.rng.uniform(0.5, 2.0))
    before = await applied_count(rig.pool, rig.settings.pg_schema)
    killed = await terminate_sessions(rig.pool, rig.application_name)
    recovery = await _recovery(rig, before, RECOVERY_LIMIT_S)
    faults.done.append({"kind": "terminate", "sessions": killed, "recovery_s": _round(recovery)})


async def _restart(run: ChaosRun, rig: LogRig, proxy: OwnProxy, faults: _Faults) -> None:
    await asyncio.sleep(run.rng.uniform(0.5, 2.0))
    down_s = run.rng.uniform(2.0, 5.0)
    await proxy.set_enabled(False)
    killed = await terminate_sessions(rig.pool, rig.application_name)
    await asyncio.sleep(down_s)
    before = await applied_count(rig.pool, rig.settings.pg_schema)
    await proxy.set_enabled(True)
    recovery = await _recovery(rig, before, RECOVERY_LIMIT_S)
    faults.done.append(
        {"kind": "restart", "down_s": round(down_s, 1), "sessions": killed, "recovery_s": _round(recovery)}
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass
class _Cancellations:
    """Batches cancelled mid-flight on a shared pool, and what became of them."""

    attempts: int = 0
    before_commit: int = 0  # the cancelled attempt left nothing behind: the retry applied the batch
    after_commit: int = 0  # the cancelled attempt had committed: the retry was fenced, nothing applied twice
    idle_after: int = 0  # worst count of sessions idle in transaction right after a cancellation (settled)
    pool_errors: int = 0
    swallowed: int = 0  # cancellations that did not end the task as cancelled (or not within the limit)
    slowest_s: float = 0.0  # longest time from cancel() to the task's end


async def _cancellations(run: ChaosRun, settings_schema: str, count: int) -> tuple[_Cancellations, dict[str, Any]]:
    """Cancel `count` batch applications at random moments on one pool; retry each; judge the result."""
    schema = f"{settings_schema}_cancel"
    name = f"keel-chaos-cancel {run.run_id}"[:63]
    pool = await connect_pool(run.settings.database_url, max_size=2, application_name=name)
    run.on_cleanup(pool.close)
    observer = await run.pool(max_size=1)
    await migrate(pool, schema)
    store = PgProjectionStore(pool, schema)
    workload = SyntheticWorkload(run.seed + 1, entities_per_tenant=300, legacy_share=0.0)
    partition = TopicPartition("cancel.task.changes", 0)
    offset = 0
    stored: int | None = None
    applied: list[SourcedEvent] = []
    result = _Cancellations()
    for _ in range(count):
        events = [
            SourcedEvent(event, SourcePosition(partition.topic, 0, offset + i))
            for i, event in enumerate(workload.events(run.rng.randint(50, 300)))
            if event.entity_type != "project"
        ]
        offset += len(events)
        batch = ProjectionBatch("cancel", (OffsetAdvance(partition, stored, offset),), tuple(events))
        await _cancel_once(run, store, batch, result)
        settled = await wait_until(lambda: _no_idle(observer, name), timeout_s=5.0, every_s=0.05)
        if settled is None:
            result.idle_after = max(result.idle_after, await idle_in_transaction(observer, name))
        await _retry(store, batch, result)
        stored = offset
        applied.extend(events)
    return result, await _cancelled_state(run, pool, schema, applied)


async def _cancel_once(run: ChaosRun, store: PgProjectionStore, batch: ProjectionBatch, result: _Cancellations) -> None:
    """Apply a batch and cancel it at a random moment (mostly inside its transaction), as the watchdog would."""
    attempt = asyncio.create_task(store.apply_batch(batch))
    await asyncio.sleep(run.rng.uniform(0.0, 0.06))
    delivered = attempt.cancel()
    cancelled_at = time.monotonic()
    await asyncio.wait({attempt}, timeout=CANCEL_LIMIT_S * 10)
    result.slowest_s = max(result.slowest_s, time.monotonic() - cancelled_at)
    if not attempt.done():
        result.swallowed += 1  # still running: report it, then wait it out
        await asyncio.wait({attempt})
    if delivered and not attempt.cancelled():
        result.swallowed += 1  # the cancellation turned into a result or another error
    if not attempt.cancelled():
        with contextlib.suppress(TransientError):
            attempt.result()
    result.attempts += 1


async def _retry(store: PgProjectionStore, batch: ProjectionBatch, result: _Cancellations) -> None:
    """The runtime's retry of a cancelled batch, on the same pool: applied now, or fenced if it had committed."""
    try:
        outcome = await store.apply_batch(batch)
        result.before_commit += 1 if outcome.committed else 0
    except FencedError:
        result.after_commit += 1  # it had committed before the cancellation landed
    except TransientError:
        result.pool_errors += 1
        outcome = await store.apply_batch(batch)
        result.before_commit += 1 if outcome.committed else 0


async def _cancelled_state(run: ChaosRun, pool: Pool, schema: str, applied: list[SourcedEvent]) -> dict[str, Any]:
    """Dedup rows, feed rows and digests of the cancellation schema against a clean replay of what was sent."""
    from consumers.projector import migration_registry

    clean = replay(applied)
    versions = {"task": {3}}
    migrations = migration_registry(run.settings)
    expected = digests_in_versions({"task": clean.visible_rows("task")}, versions, migrations)
    found = {(d.tenant_id, d.entity_type, 3): d.digest for d in await PgAdmin(pool).digests(schema, ["task"])}
    rows = int(await pool.fetchval(f'SELECT count(*) FROM "{schema}".applied_ops'))  # noqa: S608 - our schema name
    feed = int(await pool.fetchval(f"SELECT count(*) FROM \"{schema}\".outbox WHERE kind = 'change'"))  # noqa: S608
    return {
        "events": len(applied),
        "applied_rows": rows,
        "feed_rows": feed,
        "digests_equal": found == expected,
    }


async def _no_idle(pool: Pool, name: str) -> bool:
    return await idle_in_transaction(pool, name) == 0


async def _real_restarts(run: ChaosRun, restarts: int) -> dict[str, Any]:
    """A dedicated PostgreSQL server of the run, restarted under a projector (full size only)."""
    from deploy.local.postgres_server import PostgresServer

    port = free_port()
    server = PostgresServer(run.folder / "postgres", port)
    await asyncio.to_thread(server.start)

    async def stop_server() -> None:
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(shutil.rmtree, server.data, ignore_errors=True)  # 100+ MB a run; its log stays

    run.on_cleanup(stop_server)
    if not await asyncio.to_thread(server.wait_healthy, 60):
        raise TimeoutError("the dedicated PostgreSQL did not start")
    settings = run.settings.model_copy(
        update={
            "database_url": server.dsn,
            "topic_prefix": f"{run.settings.topic_prefix}-own",
            "consumer_group": f"{run.settings.consumer_group}-own",
        }
    )
    rig = await open_log_rig(
        run, settings=settings, workload=SyntheticWorkload(run.seed + 2, entities_per_tenant=1_000)
    )
    projector = run.projector("projector-own-pg", settings=settings)
    await projector.start()
    stop = asyncio.Event()
    stream = asyncio.create_task(_stream(rig, stop, 800))
    done: list[dict[str, Any]] = []
    try:
        for _ in range(restarts):
            await asyncio.sleep(run.rng.uniform(2.0, 5.0))
            began = time.monotonic()
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(run.rng.uniform(1.0, 4.0))
            await asyncio.to_thread(server.start)
            down = time.monotonic() - began
            before = await _count_retrying(rig)
            recovery = await _recovery(rig, before, 60.0)
            done.append({"kind": "real-restart", "down_s": round(down, 1), "recovery_s": _round(recovery)})
    finally:
        stop.set()
        await stream
    caught = await wait_caught_up(rig.pool, settings, rig.topics, timeout_s=300)
    alive = projector.is_running()
    await projector.stop()
    verdict = await rig.verdict()
    return {
        "restarts": done,
        "caught_up": caught is not None,
        "projector_survived": alive,
        "lost": verdict.report.lost,
        "duplicated": verdict.report.duplicated,
        "diverged": verdict.report.diverged,
        "events": len(rig.producer.acknowledged),
    }


async def _count_retrying(rig: LogRig) -> int:
    """Applied ops, retried while the pool reconnects after the restart."""
    for _ in range(100):
        try:
            return await applied_count(rig.pool, rig.settings.pg_schema)
        except TransientError:
            await asyncio.sleep(0.2)
    return await applied_count(rig.pool, rig.settings.pg_schema)


def _projector_for(run: ChaosRun, rig: LogRig, proxy: OwnProxy) -> ServiceProcess:
    settings = rig.settings.model_copy(update={"database_url": dsn_through(rig.settings.database_url, proxy.listen)})
    return run.projector("projector", settings=settings, KEEL_PROJECTOR_BATCH_MAX_RECORDS="200")


@register(
    "R5",
    "PostgreSQL faults",
    "0 lost, 0 duplicated, no session left idle in transaction and the pool recovering after backends are "
    "terminated, PostgreSQL restarts (emulated on the shared server; real on a dedicated one at full size) "
    "and batches are cancelled mid-transaction",
    quick="2 terminations, 2 emulated restarts, 25 cancellations; ~25,000 events",
    full="10 terminations, 8 emulated restarts, 300 cancellations, 3 real restarts of a dedicated server",
    needs=("toxiproxy",),
)
async def postgres_faults(run: ChaosRun) -> ScenarioOutcome:
    """Run R5 (module docstring)."""
    rig = await open_log_rig(run)
    database = rig.settings.database_url
    proxy = await run.own_proxy("pg", database.rsplit("@", 1)[-1].split("/", 1)[0])
    projector = _projector_for(run, rig, proxy)
    await rig.write_next(int(run.pick(3_000, 20_000)))
    await projector.start()
    stop = asyncio.Event()
    stream = asyncio.create_task(_stream(rig, stop, run.pick(1_200, 1_200)), name="r5-stream")
    faults = _Faults()
    kinds = ["terminate"] * int(run.pick(2, 10)) + ["restart"] * int(run.pick(2, 8))
    run.rng.shuffle(kinds)
    try:
        for kind in kinds:
            if kind == "terminate":
                await _terminate(run, rig, faults)
            else:
                await _restart(run, rig, proxy, faults)
    finally:
        stop.set()
        await stream
    caught = await wait_caught_up(rig.pool, rig.settings, rig.topics, timeout_s=run.pick(180, 900))
    idle = await idle_in_transaction(rig.pool, rig.application_name)
    status = await health(projector.health_url)
    survived = projector.is_running() and projector.starts == 1
    await projector.stop()
    exit_code = projector.process.returncode if projector.process is not None else None
    cancellations, cancelled = await _cancellations(run, rig.settings.pg_schema, int(run.pick(25, 300)))
    verdict: Verdict = await rig.verdict()
    report = verdict.report
    outcome = ScenarioOutcome.judged(report, len(rig.producer.acknowledged) + int(cancelled["events"]))
    outcome.duplicated += max(0, int(cancelled["applied_rows"]) - int(cancelled["events"]))
    outcome.diverged = outcome.diverged or not cancelled["digests_equal"]
    worst = {kind: max(faults.recoveries(kind), default=0.0) for kind in ("terminate", "restart")}
    outcome.check("caught up after the faults", caught is not None, f"{caught or 0:.1f} s")
    outcome.check(
        f"the projector moved on after every fault within {RECOVERY_LIMIT_S:g} s",
        all(v <= RECOVERY_LIMIT_S for v in worst.values()),
        f"worst: after a termination {worst['terminate']:.2f} s, after a restart {worst['restart']:.2f} s",
    )
    outcome.check(
        "the projector process survived every fault (its pool recovered)",
        survived and exit_code == 0,
        f"started {projector.starts} time(s), exit code {exit_code}, {status.get('transient_failures', '?')} transient "
        f"failures, {status.get('restarts', '?')} watchdog restarts",
    )
    outcome.check(
        "no session left idle in transaction",
        idle == 0 and cancellations.idle_after == 0,
        f"projector {idle}, after cancellations {cancellations.idle_after}",
    )
    outcome.check(
        "cancelled batches applied exactly once",
        cancelled["applied_rows"] == cancelled["events"] == cancelled["feed_rows"] and bool(cancelled["digests_equal"]),
        f"{cancelled['applied_rows']} dedup rows and {cancelled['feed_rows']} feed rows for {cancelled['events']} "
        f"events; digests equal a clean replay: {cancelled['digests_equal']}",
    )
    outcome.check(
        f"every cancelled batch ended cancelled within {CANCEL_LIMIT_S:g} s",
        cancellations.swallowed == 0 and cancellations.slowest_s < CANCEL_LIMIT_S,
        f"slowest {cancellations.slowest_s:.3f} s; {cancellations.swallowed} not ended as cancelled",
    )
    outcome.check(
        "every cancelled batch accounted for (retried, or fenced because it had committed)",
        cancellations.before_commit > 0
        and cancellations.attempts == cancellations.before_commit + cancellations.after_commit,
        f"{cancellations.before_commit} cancelled before COMMIT, {cancellations.after_commit} after, "
        f"of {cancellations.attempts}",
    )
    outcome.figures.update(
        {
            "faults": {k: sum(1 for f in faults.done if f["kind"] == k) for k in ("terminate", "restart")},
            "recovery_s": {k: round(v, 2) for k, v in worst.items()},
            "sessions_terminated": sum(int(f["sessions"]) for f in faults.done),
            "fault_log": faults.done,
            "cancellations": {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(cancellations).items()},
            "transient_failures": status.get("transient_failures"),
        }
    )
    if run.quick:
        run.note("quick size: PostgreSQL restarts are emulated on the shared server (proxy cut + backends terminated)")
    else:
        await _add_real_restarts(run, outcome)
    return outcome


async def _add_real_restarts(run: ChaosRun, outcome: ScenarioOutcome) -> None:
    """Full size: restart a dedicated PostgreSQL server for real under a projector; add its verdict."""
    real = await _real_restarts(run, 3)
    outcome.lost += int(real["lost"])
    outcome.duplicated += int(real["duplicated"])
    outcome.diverged = outcome.diverged or bool(real["diverged"])
    outcome.events += int(real["events"])
    outcome.check(
        "a dedicated PostgreSQL restarted under a projector: nothing lost, recovered",
        real["caught_up"] and real["projector_survived"] and all(r["recovery_s"] is not None for r in real["restarts"]),
        f"{len(real['restarts'])} restarts, recoveries {[r['recovery_s'] for r in real['restarts']]} s",
    )
    outcome.figures["real_restarts"] = real
    run.note(
        "full size: besides the emulated restarts, a dedicated PostgreSQL server of the run was restarted for real"
    )
