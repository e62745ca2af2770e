"""The run's timeline: once a second, the fleet's counters and the projection's, for the live view and the plots."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from deploy.demo.fleet import Fleet
from keel.errors import KeelError
from keel.logging import get_logger
from projections.pg_adapter import Pool, pg_errors
from projections.sql_migrations import in_schema

__all__ = ["Sample", "Timeline"]

_log = get_logger("demo.timeline")


@dataclass(frozen=True, slots=True)
class Sample:
    """The state of the run at `t` seconds."""

    t: float
    written: int
    acknowledged: int
    projected: int
    device_backlog: int  # ops written on devices, not yet acknowledged by the gateway
    projector_backlog: int  # ops acknowledged, not yet projected
    online: int
    connected: int
    conflicts: int
    retries: int
    incidents: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        values = asdict(self)
        values["t"] = round(self.t, 2)
        values["incidents"] = list(self.incidents)
        return values


@dataclass
class Timeline:
    """Samples taken every `interval_s` while the run lasts."""

    fleet: Fleet
    pool: Pool
    schema: str
    elapsed: Callable[[], float]
    active_incidents: Callable[[], list[str]]
    interval_s: float = 1.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._count_sql = in_schema(
            "SELECT (SELECT count(*) FROM {schema}.applied_ops), (SELECT count(*) FROM {schema}.conflict_decisions)",
            self.schema,
        )
        self._projected = 0
        self._conflicts = 0

    async def _projection_counts(self) -> tuple[int, int]:
        try:
            async with pg_errors("demo counters"), self.pool.acquire() as connection:
                row = await connection.fetchrow(self._count_sql)
        except KeelError as error:
            _log.info("projection counters unavailable", error=str(error))
            return self._projected, self._conflicts
        assert row is not None
        self._projected, self._conflicts = int(row[0]), int(row[1])
        return self._projected, self._conflicts

    async def sample(self) -> Sample:
        """Take one sample now (and notice devices whose version changed)."""
        self.fleet.watch_versions()
        counters = self.fleet.counters()
        projected, conflicts = await self._projection_counts()
        taken = Sample(
            t=self.elapsed(),
            written=counters.written,
            acknowledged=counters.acknowledged,
            projected=projected,
            device_backlog=counters.pending,
            projector_backlog=max(0, counters.acknowledged - projected),
            online=counters.online,
            connected=counters.connected,
            conflicts=conflicts,
            retries=counters.retries,
            incidents=tuple(self.active_incidents()),
        )
        self.samples.append(taken)
        return taken

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until `stop` is set."""
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):  # not wait_for: it can swallow a cancel on 3.11
                    await stop.wait()

    @property
    def latest(self) -> Sample | None:
        """The newest sample."""
        return self.samples[-1] if self.samples else None
