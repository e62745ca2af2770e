"""R3 — consumer churn: projector instances join and leave every few seconds while events stream in.

Projectors run as `keel run projector` children in one consumer group with dynamic membership, so every
join and every leave rebalances the group. Every few seconds (seeded) one instance joins, or one leaves —
mostly gracefully (SIGTERM: it drains and leaves the group), sometimes by SIGKILL (its partitions wait for
its session to expire). At least one instance stays up.

A monitor samples each partition twice a second: its end offset in the log and its stored offset in
PostgreSQL. A partition with backlog whose stored offset does not move is idle; the longest such stretch
per partition must stay under 60 s. At the end one instance catches up and the checker judges the run:
nothing applied twice, nothing lost, projection = clean replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

from consumers.kafka_source_adapter import KafkaSource
from deploy.chaos.context import ChaosRun
from deploy.chaos.log_rig import LogRig, open_log_rig
from deploy.chaos.probes import stored_offsets, wait_caught_up
from deploy.chaos.scenario import ScenarioOutcome, register
from deploy.demo.services import ServiceProcess
from projections.batch import TopicPartition

__all__ = ["consumer_churn"]

IDLE_LIMIT_S = 60.0
MAX_MEMBERS = 3


@dataclass
class _Idle:
    """Per partition: since when it has had backlog at an unchanged stored offset, and the longest stretch."""

    since: dict[TopicPartition, tuple[int, float]] = field(default_factory=dict)
    longest: dict[TopicPartition, float] = field(default_factory=dict)
    samples: int = 0

    def observe(self, ends: dict[TopicPartition, int], stored: dict[TopicPartition, int], now: float) -> None:
        """One sample of every partition."""
        self.samples += 1
        for partition, end in ends.items():
            position = stored.get(partition, 0)
            if end <= position:
                self.since.pop(partition, None)
                continue
            seen, began = self.since.get(partition, (position, now))
            if seen != position:
                began = now
            self.since[partition] = (position, began)
            self.longest[partition] = max(self.longest.get(partition, 0.0), now - began)


class _Unassigned:
    async def on_revoked(self, partitions: object) -> None:
        del partitions

    async def on_assigned(self, partitions: object) -> None:
        del partitions


async def _monitor(rig: LogRig, idle: _Idle, stop: asyncio.Event) -> None:
    source = KafkaSource(rig.settings, rig.topics, group_id=None)
    await source.start(_Unassigned())
    try:
        while not stop.is_set():
            ends = await source.end_offsets(source.assignment())
            idle.observe(ends, await stored_offsets(rig.pool, rig.settings, rig.topics), time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await source.stop()


async def _stream(rig: LogRig, stop: asyncio.Event, rate_per_s: float) -> None:
    while not stop.is_set():
        await rig.write_next(int(rate_per_s / 5))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


@dataclass
class _Group:
    """The churning projector instances of the run, and how they came and went."""

    run: ChaosRun
    members: list[ServiceProcess] = field(default_factory=list)
    churn: Counter[str] = field(default_factory=Counter)

    async def join(self) -> None:
        """A new instance joins the group (a rebalance)."""
        self.churn["joins"] += 1
        member = self.run.projector(
            f"projector-{self.churn['joins']}", KEEL_LOG_LEVEL="WARNING", KEEL_PROJECTOR_BATCH_MAX_RECORDS="200"
        )
        await member.start()
        self.members.append(member)

    async def change(self) -> None:
        """One join or one leave (SIGTERM mostly, SIGKILL sometimes); never fewer than one member."""
        rng = self.run.rng
        if len(self.members) < 2 or (len(self.members) < MAX_MEMBERS and rng.random() < 0.5):
            await self.join()
            return
        leaving = self.members.pop(rng.randrange(len(self.members)))
        if rng.random() < 0.25:
            await leaving.kill()
            self.churn["killed"] += 1
        else:
            await leaving.stop()
            self.churn["left"] += 1

    async def leave_all(self) -> None:
        """Every remaining instance leaves gracefully."""
        while self.members:
            await self.members.pop().stop()
            self.churn["left"] += 1


@register(
    "R3",
    "Consumer churn",
    "with projector instances joining and leaving every few seconds: 0 duplicated, 0 lost, and no partition "
    "with backlog idle for more than 60 s",
    quick="35 s of churn, a change every 2-4 s, up to 3 members",
    full="10 min of churn, a change every 2-6 s, up to 3 members",
)
async def consumer_churn(run: ChaosRun) -> ScenarioOutcome:
    """Run R3 (module docstring)."""
    rig = await open_log_rig(run)
    await rig.write_next(int(run.pick(3_000, 20_000)))
    group = _Group(run)
    churn = group.churn
    stop = asyncio.Event()
    idle = _Idle()
    monitor = asyncio.create_task(_monitor(rig, idle, stop), name="r3-monitor")
    stream = asyncio.create_task(_stream(rig, stop, run.pick(600, 600)), name="r3-stream")
    began = time.monotonic()
    try:
        await group.join()
        await group.join()
        while time.monotonic() - began < run.pick(35, 600):
            await asyncio.sleep(run.rng.uniform(2.0, run.pick(4.0, 6.0)))
            await group.change()
        stop.set()
        await stream
        caught = await wait_caught_up(rig.pool, rig.settings, rig.topics, timeout_s=run.pick(180, 900))
    finally:
        stop.set()
        await asyncio.gather(monitor, stream, return_exceptions=True)
    await group.leave_all()
    verdict = await rig.verdict()
    report = verdict.report
    outcome = ScenarioOutcome.judged(report, len(rig.producer.acknowledged))
    longest = max(idle.longest.values(), default=0.0)
    worst = max(idle.longest, key=lambda p: idle.longest[p], default=None)
    outcome.check(
        f"no partition with backlog idle for {IDLE_LIMIT_S:g} s or more",
        longest < IDLE_LIMIT_S,
        f"longest {longest:.1f} s ({worst.topic}[{worst.partition}])" if worst else "never idle",
    )
    outcome.check("caught up after the churn", caught is not None, f"{caught or 0:.1f} s")
    outcome.check(
        "members joined and left", churn["joins"] >= 4 and churn["left"] + churn["killed"] >= 3, f"{dict(churn)}"
    )
    outcome.check("every op applied", report.applied == len(rig.producer.acknowledged), f"{report.applied}")
    outcome.figures.update(
        {
            "joins": churn["joins"],
            "leaves": churn["left"],
            "kills": churn["killed"],
            "max_backlog_idle_s": round(longest, 1),
            "idle_by_partition_s": {f"{p.topic}[{p.partition}]": round(v, 1) for p, v in sorted(idle.longest.items())},
            "monitor_samples": idle.samples,
            "redeliveries_in_log": verdict.replay.redeliveries,
        }
    )
    return outcome
