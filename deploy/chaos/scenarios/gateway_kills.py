"""R7 — the gateway SIGKILLed just before and just after the broker's acknowledgement, under devices' pushes.

SDK devices write and push continuously through `keel run gateway`. Round after round, the gateway is
restarted armed with one failpoint (`producers/gateway/failpoints.py`), drawn from the seed, and dies at the
first push that reaches it:

- `before-produce`: the push's records are about to be handed to the producer — the broker never sees
  them; the device gets no answer;
- `after-produce`: the broker acknowledged the records (they are in the log), the gateway's ledger does not
  know them yet, the device gets no answer: its retry is produced again (a second copy in the log) and the
  projector must apply it once;
- `after-commit`: log and ledger hold the ops, the answer never leaves: the retry must be acknowledged from
  the ledger without producing anything;
- `external`: SIGKILL from outside at a random moment of a push burst (the produce may be in flight).

Between rounds an unarmed gateway serves the retries. At the end everyone drains and the checker judges:
every op a device holds as acknowledged is applied exactly once, nothing acknowledged is missing from the
log, device digests = projection = clean replay. The retries deduplicated are counted from the SDK's own
counter (`duplicates_acknowledged`) and from the copies in the log the projector dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from deploy.chaos.context import ChaosRun, exited, start_armed
from deploy.chaos.fleet import ChaosFleet, open_service_rig, write_for
from deploy.chaos.scenario import ScenarioOutcome, register
from deploy.demo.services import ServiceProcess

__all__ = ["gateway_kills"]

KINDS = ("before-produce", "after-produce", "after-commit", "external")
FAILPOINT = "KEEL_GATEWAY_FAILPOINTS"


async def _kill_round(run: ChaosRun, gateway: ServiceProcess, kind: str) -> dict[str, object]:
    """Restart the gateway armed with one failpoint and wait for it to die (or kill it); what happened."""
    await gateway.stop()
    gateway.env[FAILPOINT] = "" if kind == "external" else f"{kind}=kill"
    began = time.monotonic()
    if await start_armed(gateway) is None:  # devices retry all along: a push reached it before its health answer
        gateway.env[FAILPOINT] = ""
        return {"kind": kind, "after_s": round(time.monotonic() - began, 2), "landed": True, "during_start": True}
    if kind == "external":
        await asyncio.sleep(run.rng.uniform(0.3, 2.5))
        await gateway.kill()
        landed = True
    else:
        landed = await exited(gateway, 20.0)
        if not landed:
            await gateway.kill()  # no push reached the point in time: count it as external
    gateway.env[FAILPOINT] = ""
    return {"kind": kind, "after_s": round(time.monotonic() - began, 2), "landed": landed}


@register(
    "R7",
    "Gateway SIGKILL around the broker ack",
    "with the gateway killed just before and just after the broker acknowledges a push (and after its ledger "
    "commit, and at random): nothing acknowledged is lost, every retry is deduplicated, devices converge",
    quick="6 devices, 6 kill rounds",
    full="12 devices, 40 kill rounds",
)
async def gateway_kills(run: ChaosRun) -> ScenarioOutcome:
    """Run R7 (module docstring)."""
    rig = await open_service_rig(run)
    fleet = ChaosFleet(run, rig.url, run.enrollment_secret)
    run.on_cleanup(fleet.close)
    for n in range(int(run.pick(6, 12))):
        await fleet.enroll(f"tenant-{n % 2}")
    for device in fleet.devices:
        await device.start()
    rounds = int(run.pick(6, 40))
    order = [KINDS[n % len(KINDS)] for n in range(rounds)]
    run.rng.shuffle(order)
    kills: Counter[str] = Counter()
    died_at: list[dict[str, object]] = []
    stop_writing = asyncio.Event()

    async def users() -> None:
        while not stop_writing.is_set():
            await asyncio.gather(*(write_for(d, 1.0, run.rng, rate_per_s=6.0) for d in fleet.devices))

    writing = asyncio.create_task(users(), name="r7-users")
    gateway = rig.gateway
    try:
        for kind in order:
            landed = await _kill_round(run, gateway, kind)
            kills[kind if landed["landed"] else "external"] += 1
            died_at.append(landed)
            await gateway.start()  # an unarmed gateway serves the retries for a while
            await asyncio.sleep(run.rng.uniform(1.0, 3.0))
    finally:
        stop_writing.set()
        await writing
    stuck, caught_up = await rig.settle(fleet, run.pick(90, 180))
    verdict = await rig.verdict(fleet.evidence())
    report = verdict.report
    deduplicated = sum(d.sync_loop.stats.duplicates_acknowledged for d in fleet.devices)
    outcome = ScenarioOutcome.judged(report, report.acknowledged)
    outcome.check("every device drained", not stuck and fleet.pending() == 0, f"stuck: {stuck or 'none'}")
    outcome.check("the projector caught up", caught_up is not None, f"{caught_up or 0:.1f} s after the devices drained")
    outcome.check(
        "every kind of kill happened",
        all(kills[k] > 0 for k in KINDS),
        ", ".join(f"{k} {kills[k]}" for k in KINDS),
    )
    outcome.check(
        "retries deduplicated (acknowledged from the ledger, or copies dropped by the projector)",
        deduplicated + verdict.replay.redeliveries > 0 and report.duplicated == 0,
        f"{deduplicated} retries acknowledged from the ledger, {verdict.replay.redeliveries} copies in the log",
    )
    outcome.figures.update(
        {
            "gateway_kills": dict(kills),
            "rounds": died_at,
            "retries_deduplicated": deduplicated,
            "copies_in_log": verdict.replay.redeliveries,
            "acknowledged": report.acknowledged,
            "unacknowledged_applied": report.unacknowledged_applied,
            "sdk_stop_timeouts": fleet.stop_timeouts,
        }
    )
    return outcome
