"""The device SDK's metrics: retries and backoff, ops pushed, entries applied.

They live in the app's process: an app that exposes Prometheus (or OTLP metrics) sees them; the same counts
are in `Device.status().stats` for apps that show them themselves. No device id label — one process usually
holds one device, and a fleet is watched from the server side (docs/observability.md).
"""

from __future__ import annotations

from keel.telemetry import get_meter

__all__ = ["DeviceMetrics"]

_meter = get_meter("device")
_retries = _meter.create_counter(
    "keel_device_retries_total", description="Sync steps retried after a failure, by reason (backpressure, error)"
)
_backoff = _meter.create_counter(
    "keel_device_backoff_seconds_total", unit="s", description="Time the sync loop waited before retrying"
)
_pushed = _meter.create_counter("keel_device_pushed_ops_total", description="Ops the gateway acknowledged")
_applied = _meter.create_counter("keel_device_applied_entries_total", description="Outbox entries pulled and applied")


class DeviceMetrics:
    """Records what a sync loop does (stateless: the instruments are process-wide)."""

    def retried(self, reason: str, wait_s: float) -> None:
        """A failed step and the wait before its retry."""
        _retries.add(1, {"reason": reason})
        _backoff.add(max(0.0, wait_s))

    def pushed(self, ops: int) -> None:
        """Ops acknowledged by one push."""
        if ops:
            _pushed.add(ops)

    def applied(self, entries: int) -> None:
        """Entries of one pulled page."""
        if entries:
            _applied.add(entries)
