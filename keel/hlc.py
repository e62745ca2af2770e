"""Hybrid logical clocks (Kulkarni et al., 2014): causality-respecting timestamps close to wall time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HlcTimestamp", "HybridLogicalClock", "wall_clock_ms"]


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch from the system clock."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, order=True, slots=True)
class HlcTimestamp:
    """A point in hybrid logical time; ordered by (physical_ms, logical, node)."""

    physical_ms: int
    logical: int
    node: str

    def encode(self) -> str:
        """A fixed-width string that sorts like the timestamp itself (for text columns and logs)."""
        return f"{self.physical_ms:015d}.{self.logical:06d}.{self.node}"

    @classmethod
    def decode(cls, text: str) -> HlcTimestamp:
        """Inverse of `encode`."""
        physical, logical, node = text.split(".", 2)
        return cls(int(physical), int(logical), node)

    def as_dict(self) -> dict[str, int | str]:
        """The Avro record form used in the event envelope."""
        return {"physical_ms": self.physical_ms, "logical": self.logical, "node": self.node}

    @classmethod
    def from_dict(cls, record: dict[str, int | str]) -> HlcTimestamp:
        """Inverse of `as_dict`."""
        return cls(int(record["physical_ms"]), int(record["logical"]), str(record["node"]))


ZERO = HlcTimestamp(0, 0, "")


class HybridLogicalClock:
    """A hybrid logical clock for one node; thread-safe; the wall clock is injectable for skew tests."""

    def __init__(self, node: str, wall: Callable[[], int] = wall_clock_ms, last: HlcTimestamp = ZERO) -> None:
        self._node = node
        self._wall = wall
        self._physical = last.physical_ms
        self._logical = last.logical
        self._lock = threading.Lock()

    @property
    def node(self) -> str:
        """The node id stamped on every timestamp of this clock."""
        return self._node

    def now(self) -> HlcTimestamp:
        """A timestamp for a local event, greater than every timestamp issued or observed before."""
        with self._lock:
            wall = self._wall()
            if wall > self._physical:
                self._physical, self._logical = wall, 0
            else:
                self._logical += 1
            return HlcTimestamp(self._physical, self._logical, self._node)

    def observe(self, remote: HlcTimestamp) -> HlcTimestamp:
        """Merge a received timestamp so later local events order after it; returns the new time."""
        with self._lock:
            wall = self._wall()
            physical = max(wall, self._physical, remote.physical_ms)
            if physical == self._physical and physical == remote.physical_ms:
                logical = max(self._logical, remote.logical) + 1
            elif physical == self._physical:
                logical = self._logical + 1
            elif physical == remote.physical_ms:
                logical = remote.logical + 1
            else:
                logical = 0
            self._physical, self._logical = physical, logical
            return HlcTimestamp(physical, logical, self._node)

    def last(self) -> HlcTimestamp:
        """The latest timestamp issued or merged, for persisting across restarts."""
        with self._lock:
            return HlcTimestamp(self._physical, self._logical, self._node)
