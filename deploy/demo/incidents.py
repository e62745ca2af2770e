"""The scripted incidents of a run, each started at its planned second and recorded with what it did.

- kafka-degraded: latency with jitter on the gateway's path to Kafka (Toxiproxy), healed after its duration;
- kafka-cut: the proxies disabled — produces time out, the gateway answers 503, devices back off and keep
  their ops; re-enabled after its duration;
- projector-kill / gateway-kill: SIGKILL, then a restart after the planned pause (the projector resumes
  from its offsets in PostgreSQL; devices of the killed gateway re-handshake with the new one);
- schema-rollout: the run's `schema_rollout` callback registers task v3 and moves one tenant into the
  rollout cohort (the gateway's rollout flag); its online devices handshake again at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from deploy.demo.fleet import Fleet
from deploy.demo.plan import DemoPlan, Incident, IncidentKind
from deploy.demo.services import ServiceProcess
from deploy.demo.toxiproxy import ToxiproxyControl
from keel.errors import ConfigurationError, KeelError
from keel.logging import get_logger

__all__ = ["IncidentRecord", "IncidentRunner"]

_log = get_logger("demo.incidents")


@dataclass
class IncidentRecord:
    """A planned incident and what actually happened."""

    incident: Incident
    started_at_s: float | None = None
    ended_at_s: float | None = None
    ok: bool = False
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def is_active(self) -> bool:
        """Started and not yet over."""
        return self.started_at_s is not None and self.ended_at_s is None

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.incident.kind.value,
            "description": self.incident.describe(),
            "planned_at_s": self.incident.at_s,
            "planned_duration_s": self.incident.duration_s,
            "started_at_s": None if self.started_at_s is None else round(self.started_at_s, 2),
            "ended_at_s": None if self.ended_at_s is None else round(self.ended_at_s, 2),
            "ok": self.ok,
            "detail": self.detail,
            "figures": self.figures,
        }


class IncidentRunner:
    """Runs a plan's incidents against the run's services, proxies and fleet."""

    def __init__(
        self,
        plan: DemoPlan,
        *,
        projector: ServiceProcess,
        gateway: ServiceProcess,
        toxiproxy: ToxiproxyControl | None,
        fleet: Fleet,
        schema_rollout: Callable[[Incident], Awaitable[tuple[str, dict[str, Any]]]],
        elapsed: Callable[[], float],
    ) -> None:
        self.plan = plan
        self.projector = projector
        self.gateway = gateway
        self.toxiproxy = toxiproxy
        self.fleet = fleet
        self.schema_rollout = schema_rollout
        self.elapsed = elapsed
        self.records = [IncidentRecord(incident) for incident in plan.incidents]
        self._service_lock = asyncio.Lock()

    def active(self) -> list[IncidentRecord]:
        """Incidents in progress."""
        return [r for r in self.records if r.is_active]

    async def run(self) -> None:
        """Start each incident at its time; return when all are over."""
        await asyncio.gather(*(self._at_time(record) for record in self.records))

    async def _at_time(self, record: IncidentRecord) -> None:
        delay = record.incident.at_s - self.elapsed()
        if delay > 0:
            await asyncio.sleep(delay)
        record.started_at_s = self.elapsed()
        try:
            record.detail = await self._run(record)
            record.ok = True
        except (KeelError, OSError, TimeoutError) as error:
            record.detail = f"failed: {error}"
            _log.error("incident failed", incident=record.incident.kind.value, error=str(error))
        finally:
            record.ended_at_s = self.elapsed()

    async def _run(self, record: IncidentRecord) -> str:
        incident = record.incident
        kind = incident.kind
        if kind is IncidentKind.KAFKA_DEGRADED:
            return await self._degrade(incident)
        if kind is IncidentKind.KAFKA_CUT:
            return await self._cut(record)
        if kind is IncidentKind.PROJECTOR_KILL:
            return await self._kill(record, self.projector)
        if kind is IncidentKind.GATEWAY_KILL:
            return await self._kill(record, self.gateway)
        detail, figures = await self.schema_rollout(incident)
        record.figures.update(figures)
        return detail

    def _proxies(self) -> ToxiproxyControl:
        if self.toxiproxy is None:
            raise ConfigurationError("no Toxiproxy: network incidents need `keel stack up --with-toxiproxy`")
        return self.toxiproxy

    async def _degrade(self, incident: Incident) -> str:
        proxies = self._proxies()
        toxics = await proxies.degrade(int(incident.param("latency_ms", 300)), int(incident.param("jitter_ms", 200)))
        try:
            await self._hold(proxies, incident.duration_s, "latency toxics removed")
        finally:
            await proxies.heal()
        return f"latency toxics {', '.join(toxics)} for {incident.duration_s:g}s, then removed"

    async def _cut(self, record: IncidentRecord) -> str:
        proxies = self._proxies()
        before = self.fleet.counters()
        cut = await proxies.cut()
        try:
            await self._hold(proxies, record.incident.duration_s, "proxies enabled again")
            during = self.fleet.counters()
        finally:
            await proxies.reconnect()
        refused = during.retries - before.retries
        acked = during.acknowledged - before.acknowledged
        record.figures.update({"failed_requests": refused, "acknowledged_during_cut": acked})
        return (
            f"disabled {', '.join(cut)} for {record.incident.duration_s:g}s: {refused} device requests failed "
            f"(503 or timeout) and were retried with backoff; {acked} ops acknowledged meanwhile"
        )

    @staticmethod
    async def _hold(proxies: ToxiproxyControl, duration_s: float, undone: str) -> None:
        """Keep a network incident for `duration_s`, checking that nobody undoes it meanwhile."""
        began = time.monotonic()
        while (left := duration_s - (time.monotonic() - began)) > 0:
            await asyncio.sleep(min(0.5, left))
            if not await proxies.intact():
                held = time.monotonic() - began
                raise ConfigurationError(
                    f"{undone} by someone else after {held:.1f}s of {duration_s:g}s "
                    "(a `keel stack up` resets the shared proxies)"
                )

    async def _kill(self, record: IncidentRecord, service: ServiceProcess) -> str:
        async with self._service_lock:  # a restart of one service never overlaps the kill of another
            pid = service.pid
            await service.kill()
            killed_at = time.monotonic()
            await asyncio.sleep(record.incident.duration_s)
            took = await service.start()
            down = time.monotonic() - killed_at
        record.figures.update({"killed_pid": pid, "new_pid": service.pid, "down_s": round(down, 2)})
        return f"SIGKILL to pid {pid}; restarted as pid {service.pid}, healthy {took:.1f}s after the restart"
