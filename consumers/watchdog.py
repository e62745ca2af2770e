"""A supervisor with a watchdog: restarts a consumer whose partitions have backlog but make no progress.

Stalled means one of:
- a batch has been in flight longer than `stall_s` while the runtime is not backing off on a known
  transient failure (a hung call: restarting cannot fix an unreachable database, waiting can);
- an owned partition has records beyond the fetch position, yet nothing was fetched from it for `stall_s`
  (a wedged fetcher or a lost assignment).
A restart cancels the runtime, closes its source and builds a fresh one (a new group member). Anything
already committed stays committed; anything not committed is fetched again — the offset compare-and-set
makes that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from consumers.metrics import ProjectorMetrics
from consumers.runtime import ConsumerRuntime
from keel.backoff import Backoff
from keel.errors import KeelError
from keel.logging import get_logger
from projections.batch import TopicPartition

__all__ = ["Supervisor", "Watchdog"]

_log = get_logger("watchdog")


class Watchdog:
    """Remembers since when each partition has been behind at the same fetch position."""

    def __init__(self, stall_s: float, probe_timeout_s: float = 5.0) -> None:
        self.stall_s = stall_s
        # aiokafka's end_offsets waits for a metadata refresh without a deadline; a probe that hangs would keep
        # the supervisor from noticing the runtime drained after `stop` (and a stopping projector would hang).
        self.probe_timeout_s = probe_timeout_s
        self._behind: dict[TopicPartition, tuple[int, float]] = {}

    async def stall_reason(self, runtime: ConsumerRuntime, now: float) -> str | None:
        """Why `runtime` counts as stalled, or None."""
        started = runtime.batch_started_at
        if started is not None and runtime.waiting_on is None and now - started > self.stall_s:
            return f"a batch has been in flight for {now - started:.0f}s"
        owned = runtime.source.assignment()
        if not owned or runtime.waiting_on is not None or started is not None:
            self._behind.clear()
            return None
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                ends = await runtime.source.end_offsets(owned)
                positions = {p: await runtime.source.position(p) for p in ends}
        except (KeelError, TimeoutError):
            return None  # the log is unreachable or slow to answer: a restart would not help
        behind: dict[TopicPartition, tuple[int, float]] = {}
        for partition, end in sorted(ends.items()):
            position = positions[partition]
            if position >= end:
                continue
            seen_at, since = self._behind.get(partition, (position, now))
            since = since if seen_at == position else now
            behind[partition] = (position, since)
            if now - since > self.stall_s:
                self._behind.clear()
                return (
                    f"{partition.topic}[{partition.partition}] has {end - position} records waiting and no fetch "
                    f"progress for {now - since:.0f}s"
                )
        self._behind = behind
        return None


class Supervisor:
    """Runs a runtime built by `factory`, restarting it when the watchdog finds it stalled or it crashes."""

    def __init__(
        self,
        factory: Callable[[], ConsumerRuntime],
        *,
        stall_s: float = 60.0,
        check_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self.stall_s = stall_s
        self.check_every_s = check_every_s
        self.watchdog = Watchdog(stall_s)
        self._clock = clock
        self.runtime: ConsumerRuntime | None = None
        self.restarts = 0
        self._backoff = Backoff(0.5, 10.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Supervise until `stop` is set (the runtime then drains on its own)."""
        while not stop.is_set():
            runtime = self._factory()
            self.runtime = runtime
            task = asyncio.create_task(runtime.run(stop), name="consumer-runtime")
            reason = await self._watch(runtime, task)
            if reason is None and task.done() and not task.cancelled() and task.exception() is None:
                return  # drained after stop
            self.restarts += 1
            ProjectorMetrics().restarted("stalled" if reason is not None else "crashed")
            if reason is not None:
                _log.warning("watchdog restarts a stalled consumer", reason=reason, restarts=self.restarts)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                await runtime.close()
            else:
                error = task.exception() if not task.cancelled() else None
                _log.error("consumer crashed; restarting", error=repr(error), restarts=self.restarts)
                await runtime.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._backoff.next_delay()):  # not wait_for: it can lose a cancel
                        await stop.wait()

    async def _watch(self, runtime: ConsumerRuntime, task: asyncio.Task[None]) -> str | None:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.check_every_s)
            if done:
                return None
            reason = await self.watchdog.stall_reason(runtime, self._clock())
            if reason is not None:
                return reason
        return None
