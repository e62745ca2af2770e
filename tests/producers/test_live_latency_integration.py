"""Device to device through the live stream: the projector's outbox notification wakes the other device's
stream at once, so delivery does not wait for the gateway's poll of the outbox."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from producers.device import Device
from tests.producers.live import live_keel, settle
from tests.support.services import Services

pytestmark = pytest.mark.integration

SAMPLES = 15


async def _until(check: Callable[[], bool], timeout_s: float = 30.0, every_s: float = 0.002) -> None:
    """Poll a local condition (a device's store) finely, so the measurement adds at most `every_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if check():
                return
            await asyncio.sleep(every_s)


async def device_to_device_latencies(alice: Device, bob: Device, samples: int) -> list[float]:
    """Seconds from alice's local write to the change being in bob's store, one write at a time."""
    latencies = []
    for n in range(samples):
        entity_id = f"lat-{n}"
        started = time.monotonic()
        alice.upsert("task", entity_id, {"title": f"sample {n}"})
        await _until(lambda entity_id=entity_id: bob.get("task", entity_id) is not None)
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.05)  # not in the same projector batch as the next write
    return latencies


async def _measure(services: Services, tmp_path: Path, **settings: Any) -> list[float]:
    async with live_keel(services, **settings) as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db")
        await alice.start()
        await bob.start()
        await settle([alice, bob])
        await _until(lambda: bob.sync_loop._stream_connected)  # bob waits on his live stream, not a long-poll
        latencies = await device_to_device_latencies(alice, bob, SAMPLES)
        signalled = keel.gateway.watcher.signals_received
        if settings.get("gateway_outbox_signals", True):
            assert signalled >= SAMPLES, "a notification per projected write"
        else:
            assert signalled == 0
        return latencies


def _report(label: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"{label}: median {statistics.median(ordered) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, n={len(ordered)}"


async def test_a_change_reaches_a_streaming_device_on_the_projectors_signal_not_the_poll(
    services: Services, tmp_path: Path
) -> None:
    # Polling slowed to 5 s: only the notification can explain a delivery well under it.
    latencies = await _measure(services, tmp_path, gateway_outbox_poll_s=5.0, gateway_outbox_fallback_poll_s=5.0)
    print(_report("signals, poll 5 s", latencies))  # the figure docs/projections.md quotes (pytest -s)
    assert statistics.median(latencies) < 1.0, _report("signals", latencies)
    assert max(latencies) < 5.0, "no delivery waited for the fallback poll"


@pytest.mark.long
@pytest.mark.parametrize(
    ("label", "settings"),
    [
        ("polling 0.25 s (no signals)", {"gateway_outbox_signals": False, "gateway_outbox_poll_s": 0.25}),
        ("signals (fallback poll 2 s)", {"gateway_outbox_signals": True, "gateway_outbox_poll_s": 0.25}),
    ],
)
async def test_device_to_device_latency_with_and_without_signals(
    services: Services, tmp_path: Path, label: str, settings: dict[str, Any]
) -> None:
    latencies = await _measure(services, tmp_path, **settings)
    print(_report(label, latencies))  # compared in docs/projections.md (pytest -s)
    assert statistics.median(latencies) < 2.0, _report(label, latencies)
