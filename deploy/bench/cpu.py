"""Where the CPU went during a bench window: per process group (gateway, projector, Kafka, PostgreSQL, …).

Read with psutil before and after a window. PostgreSQL counts the postmaster, its live backends and the CPU
of backends already reaped (the postmaster's children times); "other" is the machine's busy time no group
accounts for — on a shared machine, other people's work.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

__all__ = ["CpuMeter", "CpuSplit"]


def _cpu(process: psutil.Process, *, with_children: bool = False) -> float:
    with contextlib.suppress(psutil.Error):
        times = process.cpu_times()
        total = times.user + times.system
        if with_children:
            total += times.children_user + times.children_system
        return float(total)
    return 0.0


def _java(marker: str) -> float:
    total = 0.0
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or ())
        if process.info.get("name") == "java" and marker in cmdline:
            total += _cpu(process)
    return total


def _postgres() -> float:
    total = 0.0
    for process in psutil.process_iter(["name", "ppid"]):
        if process.info.get("name") != "postgres":
            continue
        is_postmaster = process.info.get("ppid") == 1 or not _is_postgres(process.info.get("ppid"))
        total += _cpu(process, with_children=is_postmaster)
    return total


def _is_postgres(pid: int | None) -> bool:
    if pid is None:
        return False
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).name() == "postgres"
    return False


def _busy() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class CpuSplit:
    """CPU seconds per group over a window, and the window's length."""

    seconds: float
    groups: dict[str, float] = field(default_factory=dict)

    def per_event_us(self, events: int) -> dict[str, float]:
        """Microseconds of CPU per event, per group."""
        return {name: round(used / max(1, events) * 1e6, 1) for name, used in self.groups.items()}

    def cores(self) -> dict[str, float]:
        """Average cores busy, per group."""
        return {name: round(used / max(1e-9, self.seconds), 2) for name, used in self.groups.items()}


class CpuMeter:
    """Snapshots of CPU time per group: the given services, Kafka, PostgreSQL, the registry and this process."""

    def __init__(self, services: dict[str, Callable[[], float]]) -> None:
        self._readers: dict[str, Callable[[], float]] = {
            **services,
            "kafka": lambda: _java("kafka.Kafka"),
            "postgresql": _postgres,
            "registry": lambda: _java("apicurio"),
            "bench (load, watch)": lambda: _cpu(psutil.Process(os.getpid())),
        }
        self._start: dict[str, float] = {}
        self._began = 0.0

    def start(self) -> None:
        """Open a window."""
        self._start = {name: read() for name, read in self._readers.items()}
        self._start["machine"] = _busy()
        self._began = time.monotonic()

    def stop(self) -> CpuSplit:
        """Close the window: CPU seconds per group, plus "other" (busy time nobody here accounts for)."""
        used = {name: max(0.0, read() - self._start[name]) for name, read in self._readers.items()}
        machine = max(0.0, _busy() - self._start["machine"])
        used["other"] = max(0.0, machine - sum(used.values()))
        used["machine"] = machine
        return CpuSplit(time.monotonic() - self._began, used)
