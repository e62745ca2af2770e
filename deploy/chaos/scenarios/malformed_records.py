"""R4 — malformed records mixed into live topics: all dead-lettered with reasons, valid ones unaffected.

A projector runs on the run's topics, its PostgreSQL path through a Toxiproxy proxy of the run's own.

1. **Poison.** A valid stream flows; every fraction of a second one malformed record (each kind of
   `deploy/chaos/malformed.py` in turn: bad magic byte, unknown schema id, truncated Avro, a huge length
   prefix, invalid UTF-8, a null value, a replayed seq with other content, an oversized field) is
   appended, immediately followed by a valid event of the same entity — so in the same partition. Its
   stall is the time from the malformed record's acknowledgement to the application of that next valid
   event (`applied_ops.applied_at`): the time the partition was held up, normal latency included.
2. **Outage.** The proxy is disabled for a few seconds while valid events keep arriving: the projector
   backs off and retries; nothing may reach the DLQ.

The DLQ is then read from the start: every malformed record must be there, once, under its source
position, with the expected `keel-dlq-error-class` and a message; nothing else may be. The checker judges
the valid events (nothing lost or applied twice, projection = clean replay).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from consumers.dead_letter import ERROR_CLASS, ERROR_MESSAGE, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC
from deploy.chaos.context import ChaosRun
from deploy.chaos.log_rig import LogRig, open_log_rig
from deploy.chaos.malformed import EXPECTED_REASON, KINDS, damage, marker_title, oversized_event, replayed_event
from deploy.chaos.probes import health, log_end_offsets, read_records, wait_caught_up
from deploy.chaos.proxies import OwnProxy, dsn_through
from deploy.chaos.scenario import ScenarioOutcome, register
from deploy.demo.services import ServiceProcess
from keel.event_log import OutgoingRecord
from keel.hlc import HlcTimestamp
from projections.pg_adapter import pg_errors
from projections.sql_migrations import in_schema
from schemas.envelope import ChangeEvent, Op

__all__ = ["malformed_records"]

POISON_DEVICE = "poison-device"
STALL_LIMIT_S = 1.0


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class _Poison:
    """One malformed record as written: its kind, where it landed, when, and the valid event after it."""

    kind: str
    topic: str
    partition: int
    offset: int
    acked_at: float  # wall clock (s) when the log acknowledged it
    follower: ChangeEvent


def _next_task(rig: LogRig) -> ChangeEvent:
    """The workload's next task event (its entity is where the poison goes); others drawn meanwhile go first."""
    while True:
        event = rig.workload.next_event()
        if event.entity_type == "task":
            return event
        rig.held_back.append(event)


async def _poison_value(rig: LogRig, kind: str, n: int, key_entity: str, applied: list[ChangeEvent]) -> bytes | None:
    """The value of the `n`-th malformed record of `kind`, for the entity `key_entity`."""
    template = ChangeEvent(
        event_id=f"00000000-0000-4000-8000-{n:012d}",
        tenant_id="tenant-0",
        device_id=POISON_DEVICE,
        device_seq=n + 1,
        entity_type="task",
        entity_id=key_entity,
        op=Op.UPSERT,
        hlc=HlcTimestamp(int(time.time() * 1000), 0, POISON_DEVICE),
        schema_version=3,
        payload={"title": marker_title(n)},
        changed_fields=("title",),
    )
    encoder = rig.producer.encoder
    if kind == "replayed-seq":
        victim = applied[n % len(applied)]
        return await encoder.encode(replace(replayed_event(victim, n), entity_id=key_entity))
    if kind == "oversized":
        return await encoder.encode(oversized_event(template, n + 1, n))
    return damage(kind, await encoder.encode(template))


async def _poison_round(rig: LogRig, kind: str, n: int, applied: list[ChangeEvent]) -> _Poison:
    async with rig.writing:
        follower = _next_task(rig)
        if kind == "replayed-seq":
            # Next to the op it replays, as a retrying producer would append it: the same entity, so the same
            # partition, after it (across partitions the log has no order to say which copy came first).
            follower = replace(follower, entity_id=applied[n % len(applied)].entity_id)
        if rig.held_back:
            await rig.producer.write(rig.held_back)
            rig.held_back.clear()
        key = follower.entity_id
        value = await _poison_value(rig, kind, n, key, applied)
        topic = rig.settings.topic_for("task")
        [position] = await rig.writer.write([OutgoingRecord(topic, key.encode(), value)])
        acked_at = time.time()
        await rig.producer.write([follower])
    return _Poison(kind, position.topic, position.partition, position.offset, acked_at, follower)


async def _applied_at(rig: LogRig, events: list[ChangeEvent]) -> dict[str, float]:
    """Event id → when its transaction applied it (epoch seconds)."""
    sql = in_schema(
        "SELECT event_id, extract(epoch FROM applied_at) AS at FROM {schema}.applied_ops WHERE event_id = ANY($1)",
        rig.settings.pg_schema,
    )
    async with pg_errors("read applied_at"):
        rows = await rig.pool.fetch(sql, [e.event_id for e in events])
    return {r["event_id"]: float(r["at"]) for r in rows}


async def _stream(rig: LogRig, seconds: float, rate_per_s: float) -> None:
    """Valid events at about `rate_per_s` for `seconds`."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        await rig.write_next(int(rate_per_s / 5))
        await asyncio.sleep(0.2)


def _dead_letters(records: list[Any]) -> tuple[dict[tuple[str, int, int], list[dict[str, str]]], int]:
    """DLQ records by source position (each with its headers), and how many there are."""
    found: dict[tuple[str, int, int], list[dict[str, str]]] = {}
    for record in records:
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
        source = (
            headers.get(SOURCE_TOPIC, ""),
            int(headers.get(SOURCE_PARTITION, -1)),
            int(headers.get(SOURCE_OFFSET, -1)),
        )
        found.setdefault(source, []).append(headers)
    return found, len(records)


@register(
    "R4",
    "Malformed records in the topics",
    "every malformed record (bad magic byte, unknown schema id, truncated Avro, huge length prefix, invalid "
    "UTF-8, null value, replayed seq, oversized field) in the DLQ with its reason, each stalling its partition "
    "under 1 s, valid records unaffected; a PostgreSQL outage sends nothing to the DLQ",
    quick="3 of each kind (24) in ~2,000 valid events, a 6 s PostgreSQL outage",
    full="40 of each kind (320) in ~60,000 valid events, a 30 s PostgreSQL outage",
    needs=("toxiproxy",),
)
async def malformed_records(run: ChaosRun) -> ScenarioOutcome:
    """Run R4 (module docstring)."""
    rig = await open_log_rig(run)
    database = rig.settings.database_url
    proxy = await run.own_proxy("pg", database.rsplit("@", 1)[-1].split("/", 1)[0])
    projector_settings = rig.settings.model_copy(update={"database_url": dsn_through(database, proxy.listen)})
    projector = run.projector("projector", settings=projector_settings)
    backlog = await rig.write_next(int(run.pick(1_000, 20_000)))
    await projector.start()
    if await wait_caught_up(rig.pool, rig.settings, rig.topics, timeout_s=run.pick(120, 600)) is None:
        raise TimeoutError("the projector did not apply the valid backlog")
    poisons, caught = await _poison_phase(run, rig, [e for e in backlog if e.entity_type == "task"])
    outage = await _outage_phase(run, rig, proxy, projector)
    verdict = await rig.verdict()
    report = verdict.report
    outcome = ScenarioOutcome.judged(report, len(rig.producer.acknowledged))
    outcome.check("caught up after the poison", caught is not None, f"{caught or 0:.1f} s")
    await _judge_dead_letters(rig, poisons, outcome)
    outcome.check(
        "the outage sent nothing to the DLQ",
        outage["dead_lettered"] == 0,
        f"{outage['dead_lettered']} dead letters during a {outage['outage_s']:g} s outage",
    )
    outcome.check(
        "the projector felt the outage and recovered",
        int(outage["transient_failures"] or 0) > 0 and outage["recovery_s"] is not None,
        f"{outage['transient_failures']} transient failures during it; caught up {outage['recovery_s']} s after it",
    )
    outcome.check(
        "every valid op applied",
        report.lost == 0 and report.applied == len(rig.producer.acknowledged),
        f"{report.applied} of {len(rig.producer.acknowledged)}",
    )
    outcome.figures.update(
        {
            "dlq_during_outage": outage["dead_lettered"],
            "outage_s": outage["outage_s"],
            "transient_failures_during_outage": outage["transient_failures"],
            "recovery_s": outage["recovery_s"],
        }
    )
    return outcome


async def _poison_phase(run: ChaosRun, rig: LogRig, applied: list[ChangeEvent]) -> tuple[list[_Poison], float | None]:
    """Malformed records, one at a time, each followed by a valid event in its partition, in a valid stream."""
    poisons: list[_Poison] = []
    stream = asyncio.create_task(_stream(rig, 1e9, run.pick(100, 400)), name="r4-stream")
    try:
        for n in range(int(run.pick(3, 40)) * len(KINDS)):
            poisons.append(await _poison_round(rig, KINDS[n % len(KINDS)], n, applied))
            await asyncio.sleep(run.pick(0.4, 0.25))
        caught = await wait_caught_up(rig.pool, rig.settings, rig.topics, timeout_s=120)
    finally:
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)
    return poisons, caught


async def _outage_phase(run: ChaosRun, rig: LogRig, proxy: OwnProxy, projector: ServiceProcess) -> dict[str, Any]:
    """The projector's PostgreSQL path cut while valid events keep arriving; what reached the DLQ meanwhile."""
    before = await log_end_offsets(rig.settings, [rig.settings.dlq_topic])
    await proxy.set_enabled(False)
    outage_s = run.pick(6.0, 30.0)
    await _stream(rig, outage_s, run.pick(100, 400))
    during = await health(projector.health_url)
    await proxy.set_enabled(True)
    recovered = time.monotonic()
    caught = await wait_caught_up(rig.pool, rig.settings, rig.topics, timeout_s=run.pick(120, 600))
    recovery_s = time.monotonic() - recovered
    await projector.stop()
    after = await log_end_offsets(rig.settings, [rig.settings.dlq_topic])
    return {
        "outage_s": outage_s,
        "dead_lettered": sum(after.values()) - sum(before.values()),
        "transient_failures": during.get("transient_failures"),
        "recovery_s": round(recovery_s, 1) if caught is not None else None,
    }


async def _judge_dead_letters(rig: LogRig, poisons: list[_Poison], outcome: ScenarioOutcome) -> None:
    """Every malformed record in the DLQ once, with its reason and a message; its stall under the limit."""
    stalls_at = await _applied_at(rig, [p.follower for p in poisons])
    stalls = {p: stalls_at[p.follower.event_id] - p.acked_at for p in poisons if p.follower.event_id in stalls_at}
    letters, dlq_total = _dead_letters(await read_records(rig.settings, [rig.settings.dlq_topic]))
    wrong_reason, missing, no_message = [], [], []
    for p in poisons:
        found = letters.get((p.topic, p.partition, p.offset))
        if not found:
            missing.append(p.kind)
        elif found[0].get(ERROR_CLASS) != EXPECTED_REASON[p.kind]:
            wrong_reason.append(f"{p.kind}: {found[0].get(ERROR_CLASS)}")
        elif not found[0].get(ERROR_MESSAGE):
            no_message.append(p.kind)
    ours = {(p.topic, p.partition, p.offset) for p in poisons}
    by_reason = Counter(found[0].get(ERROR_CLASS, "?") for key, found in letters.items() if key in ours)
    worst = max(stalls.values(), default=0.0)
    outcome.check(
        "every malformed record is in the DLQ",
        not missing,
        f"{len(poisons) - len(missing)} of {len(poisons)}" + (f"; missing {missing}" if missing else ""),
    )
    outcome.check(
        "each with the expected reason",
        not wrong_reason,
        "; ".join(wrong_reason) or ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())),
    )
    outcome.check("each with an error message", not no_message, ", ".join(no_message) or "all")
    outcome.check(
        "nothing else in the DLQ",
        dlq_total == len(poisons) and len(ours) == len(letters),
        f"{dlq_total} dead letters for {len(poisons)} malformed records",
    )
    outcome.check(
        f"each stalls its partition under {STALL_LIMIT_S:g} s",
        worst < STALL_LIMIT_S and len(stalls) == len(poisons),
        f"max {worst:.3f} s over {len(stalls)}",
    )
    ordered = sorted(stalls.values())
    outcome.figures.update(
        {
            "malformed": len(poisons),
            "dlq_by_reason": dict(sorted(by_reason.items())),
            "max_stall_s": round(worst, 3),
            "median_stall_s": round(ordered[len(ordered) // 2], 3) if ordered else 0.0,
            "stall_by_kind_max_s": {
                kind: round(max((s for p, s in stalls.items() if p.kind == kind), default=0.0), 3) for kind in KINDS
            },
        }
    )
