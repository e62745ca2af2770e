"""Retries and backoff are counted where an app can see them: `Device.status().stats` and the device metrics."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from keel.telemetry import configure_telemetry, prometheus_text
from producers.device.store import OpStatus
from tests.consumers.fake_world import eventually
from tests.producers.support import FAST, fake_keel


def _retries(reason: str) -> float:
    text = prometheus_text().decode()
    match = re.search(
        rf'^keel_device_retries_total\{{[^}}]*reason="{reason}"[^}}]*\}} ([0-9.e+]+)$', text, re.MULTILINE
    )
    return float(match.group(1)) if match else 0.0


async def test_a_rate_limited_device_counts_its_waits_and_still_delivers_everything(tmp_path: Path) -> None:
    configure_telemetry("test")
    before = _retries("backpressure")
    # Pushes of two ops against four ops/s with a burst of two: the second push comes too soon (429).
    async with fake_keel(gateway_device_rate_per_s=4.0, gateway_device_burst=2) as keel:
        device = await keel.device(tmp_path / "d.db", config=replace(FAST, max_batch_ops=2))
        try:
            for index in range(6):
                device.upsert("task", f"t-{index}", {"title": str(index)})
            await device.start()
            await eventually(lambda: device.replica.count(OpStatus.PENDING) == 0, timeout_s=20)
            stats = device.status().stats
        finally:
            await device.close()
    assert stats.ops_acknowledged == 6
    assert stats.backpressure_waits >= 1
    assert stats.retries >= stats.backpressure_waits
    assert stats.backoff_s > 0
    assert _retries("backpressure") >= before + stats.backpressure_waits
