"""R6 — devices behind a bad network, offline half the time, answers lost after the server committed.

Every device reaches the gateway through a Toxiproxy proxy of the run's own. Phase after phase (seeded),
the proxy carries one kind of trouble in both directions:

- `latency`: 300 ms ± 250 ms of jitter;
- `timeout`: on some connections data stops and the connection closes 0.8 s later;
- `reset`: some connections are reset (TCP RST);
- `slicer`: data cut into small slices with delays;
- `limit-data`: some connections are closed after a few hundred bytes of the answer — the push was
  committed by the gateway, the device never hears it and retries (the ledger deduplicates).

Each device alternates online and offline stretches (about half the time offline) and keeps writing all
along. Each time a device comes back with ops queued, the time until its upload queue is empty is
measured: it must stay under 60 s. At the end the proxy is healed, everyone comes online and drains, and
the checker judges: nothing acknowledged lost or applied twice, every device's digest = the projection's
= a clean replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from deploy.chaos.context import ChaosRun
from deploy.chaos.fleet import ChaosFleet, open_service_rig, write_for
from deploy.chaos.proxies import OwnProxy
from deploy.chaos.scenario import ScenarioOutcome, register
from producers.device import Device
from producers.device.store import OpStatus

__all__ = ["device_network"]

DRAIN_LIMIT_S = 60.0
TROUBLES: dict[str, list[tuple[str, dict[str, Any], float]]] = {
    "latency": [("latency", {"latency": 300, "jitter": 250}, 1.0)],
    "timeout": [("timeout", {"timeout": 800}, 0.3)],
    "reset": [("reset_peer", {"timeout": 100}, 0.3)],
    "slicer": [("slicer", {"average_size": 64, "size_variation": 48, "delay": 150}, 1.0)],
    "limit-data": [("limit_data", {"bytes": 300}, 0.35)],
}


@dataclass
class _Drains:
    """Upload-queue drains after reconnections."""

    times: list[float] = field(default_factory=list)
    interrupted: list[float] = field(default_factory=list)  # went offline again before draining (after s)
    over_limit: list[str] = field(default_factory=list)


async def _trouble(proxy: OwnProxy, run: ChaosRun, stop: asyncio.Event, applied: dict[str, int]) -> None:
    names = list(TROUBLES)
    run.rng.shuffle(names)
    index = 0
    while not stop.is_set():
        kind = names[index % len(names)] if index < len(names) else run.rng.choice(names)
        index += 1
        for toxic, attributes, toxicity in TROUBLES[kind]:
            streams = ("downstream",) if toxic == "limit_data" else ("downstream", "upstream")
            for stream in streams:
                await proxy.add(f"{kind}-{stream}", toxic, attributes, stream=stream, toxicity=toxicity)
        applied[kind] = applied.get(kind, 0) + 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(run.rng.uniform(3.0, 6.0)):
                await stop.wait()
        await proxy.clear()


async def _watch_drain(device: Device, drains: _Drains) -> None:
    """From a reconnection with ops queued: seconds until the queue is empty (or the device leaves again)."""
    began = time.monotonic()
    while device.replica.count(OpStatus.PENDING):
        elapsed = time.monotonic() - began
        if elapsed > DRAIN_LIMIT_S:
            queued = device.replica.count(OpStatus.PENDING)
            drains.over_limit.append(f"{device.device_id}: {elapsed:.0f} s and still {queued} queued")
            return
        if not device.is_online:
            drains.interrupted.append(round(elapsed, 1))
            return
        await asyncio.sleep(0.1)
    drains.times.append(time.monotonic() - began)


async def _live(
    fleet: ChaosFleet, device: Device, run: ChaosRun, seconds: float, *, drains: _Drains, shares: list[float]
) -> None:
    """One device's life: writing all along, online and offline in turns (about half the time each)."""
    offline_for = 0.0
    deadline = time.monotonic() + seconds
    writer = asyncio.create_task(write_for(device, seconds, run.rng, rate_per_s=3.0))
    watches: list[asyncio.Task[None]] = []
    try:
        while time.monotonic() < deadline:
            stretch = min(run.rng.uniform(3.0, 9.0), max(0.1, deadline - time.monotonic()))
            await asyncio.sleep(stretch)
            if device.is_online:
                await fleet.go_offline(device)
                continue
            offline_for += stretch
            await device.go_online()
            if device.replica.count(OpStatus.PENDING):
                watches.append(asyncio.create_task(_watch_drain(device, drains)))
        await writer
    finally:
        if not writer.done():
            writer.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        if not device.is_online:
            await device.go_online()
    shares.append(offline_for / seconds)


@register(
    "R6",
    "Devices behind a bad network",
    "with latency and jitter, timeouts, resets, slicing and answers cut after the gateway committed, and "
    "devices offline half the time: every upload queue drains within 60 s of reconnecting, nothing lost or "
    "applied twice, every device's digest = the server's",
    quick="6 devices, 30 s",
    full="16 devices, 5 min",
    needs=("toxiproxy",),
)
async def device_network(run: ChaosRun) -> ScenarioOutcome:
    """Run R6 (module docstring)."""
    rig = await open_service_rig(run)
    proxy = await run.own_proxy("gateway", rig.url.removeprefix("http://"))
    fleet = ChaosFleet(run, f"http://{proxy.listen}", run.enrollment_secret)
    run.on_cleanup(fleet.close)
    for n in range(int(run.pick(6, 16))):
        await fleet.enroll(f"tenant-{n % 2}")
    for device in fleet.devices:
        await device.start()
    seconds = run.pick(30.0, 300.0)
    drains = _Drains()
    shares: list[float] = []
    troubles: dict[str, int] = {}
    stop = asyncio.Event()
    network = asyncio.create_task(_trouble(proxy, run, stop, troubles), name="r6-trouble")
    try:
        await asyncio.gather(*(_live(fleet, d, run, seconds, drains=drains, shares=shares) for d in fleet.devices))
    finally:
        stop.set()
        await network
    await proxy.clear()
    stuck, caught_up = await rig.settle(fleet, run.pick(120, 240))
    verdict = await rig.verdict(fleet.evidence())
    report = verdict.report
    stats = [d.sync_loop.stats for d in fleet.devices]
    outcome = ScenarioOutcome.judged(report, report.acknowledged)
    longest = max(drains.times, default=0.0)
    outcome.check(
        f"every upload queue drained within {DRAIN_LIMIT_S:g} s of reconnecting",
        not drains.over_limit and bool(drains.times),
        f"{len(drains.times)} drains, longest {longest:.1f} s; {len(drains.interrupted)} cut short by going offline"
        + (f"; over the limit: {drains.over_limit}" if drains.over_limit else ""),
    )
    outcome.check("every device drained at the end", not stuck and fleet.pending() == 0, f"stuck: {stuck or 'none'}")
    outcome.check("the projector caught up", caught_up is not None, f"{caught_up or 0:.1f} s after the devices drained")
    outcome.check("device digests equal the server's", not report.diverged, f"{report.digests_compared} comparisons")
    outcome.check("every kind of trouble was played", set(troubles) == set(TROUBLES), f"{troubles}")
    outcome.check(
        "the network did hurt",
        sum(s.transient_failures for s in stats) > 0,
        f"{sum(s.transient_failures for s in stats)} transient failures on devices",
    )
    ordered = sorted(drains.times)
    outcome.figures.update(
        {
            "max_drain_s": round(longest, 2),
            "median_drain_s": round(ordered[len(ordered) // 2], 2) if ordered else 0.0,
            "drains": len(drains.times),
            "drains_cut_short": len(drains.interrupted),
            "offline_share": round(sum(shares) / len(shares), 2) if shares else 0.0,
            "troubles": troubles,
            "responses_dropped": sum(s.duplicates_acknowledged for s in stats),
            "transient_failures": sum(s.transient_failures for s in stats),
            "sdk_stop_timeouts": fleet.stop_timeouts,
        }
    )
    return outcome
