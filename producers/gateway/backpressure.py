"""Backpressure: a token bucket per device and a byte budget for what the producer holds unacknowledged.

Both answer with `BackpressureError(retry_after_s)` (HTTP 429 + Retry-After) instead of queueing without
bound: a device that pushes too fast, or a broker that acknowledges too slowly, slows its devices down.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from keel.errors import BackpressureError

__all__ = ["DeviceRateLimiter", "ProducerBudget", "TokenBucket"]


@dataclass
class TokenBucket:
    """`rate` tokens per second up to `burst`; `take` returns 0 or the seconds until enough tokens exist."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, amount: float, now: float) -> float:
        """Take `amount` tokens if present (0.0), else the wait until they will be (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        needed = min(amount, self.burst)  # a batch larger than the burst waits for a full bucket, not forever
        if self.tokens >= needed:
            self.tokens -= needed
            return 0.0
        return (needed - self.tokens) / self.rate


class DeviceRateLimiter:
    """Ops per second per device (buckets of idle devices are forgotten, oldest first)."""

    def __init__(
        self, rate_per_s: float, burst: int, *, max_devices: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max = max_devices
        self._clock = clock

    def raise_if_limited(self, device_id: str, ops: int) -> None:
        """BackpressureError when the device may not push `ops` ops now."""
        if self.rate <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self.burst, now)
            self._buckets[device_id] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(device_id)
        wait = bucket.take(ops, now)
        if wait > 0:
            raise BackpressureError(f"device {device_id} exceeds {self.rate:g} ops/s", retry_after_s=wait)


class ProducerBudget:
    """Bytes handed to the producer and not yet acknowledged, bounded; one request is always let through."""

    def __init__(self, max_bytes: int, *, retry_after_s: float = 1.0) -> None:
        self.max_bytes = max_bytes
        self.in_flight = 0
        self._retry_after_s = retry_after_s

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold `size` bytes for the block; BackpressureError if the buffer is full."""
        if self.in_flight and self.in_flight + size > self.max_bytes:
            raise BackpressureError(
                f"producer buffer full ({self.in_flight} of {self.max_bytes} bytes awaiting the broker)",
                retry_after_s=self._retry_after_s,
            )
        self.in_flight += size
        try:
            yield
        finally:
            self.in_flight -= size
