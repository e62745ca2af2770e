"""The demo's script: a fleet, what each device does when, and the incidents — a pure function of the seed.

`make_plan(seed, devices=…, tenants=…, duration_s=…, chaos=…)` draws everything from one `random.Random(seed)`
and nothing else (no clock, no uuid), so the same arguments always give the same plan (`DemoPlan.fingerprint`).
What the plan holds:

- **devices**: spread over the tenants; about one in six a legacy build that speaks task v1 only, the rest
  task v1 to v3 (most builds) or v1 and v2; about one in five with a wall clock skewed by up to five minutes;
- **writes**: each device writes at its own pace, online or offline — creating tasks, renaming, re-prioritising,
  completing and deleting them, commenting, editing projects (`deploy/demo/workload.py`) — as intents in the
  newest model that the fleet renders into the version the device speaks at that moment (`edits.py`);
- **contention**: every few seconds per tenant, two or three devices edit the same field of a shared task
  within a second or so of each other, without having seen each other's write — a conflict to resolve;
- **connectivity**: offline windows on seeded random schedules, one "road warrior" per tenant away for a
  good part of the run (the longest catch-up);
- **incidents** (per chaos level): the gateway→Kafka path degraded then cut, the projector and the gateway
  killed with SIGKILL and restarted, and a schema rollout of task v3 to one tenant's devices.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deploy.demo.workload import Edit, TenantBoard
from keel.errors import ValidationError

__all__ = [
    "Action",
    "ActionKind",
    "Chaos",
    "DemoPlan",
    "DeviceSpec",
    "Incident",
    "IncidentKind",
    "make_plan",
]

TENANT_NAMES = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell", "soylent", "oscorp")
DEVICE_KINDS = ("laptop", "desktop", "phone", "tablet")
MAX_SKEW_MS = 5 * 60_000


class Chaos(enum.StrEnum):
    """How much goes wrong during the run."""

    NONE = "none"
    STANDARD = "standard"
    HEAVY = "heavy"


# Heavy chaos needs room for eight incidents that must not run into each other.
MIN_DURATION_S = {Chaos.NONE: 20.0, Chaos.STANDARD: 20.0, Chaos.HEAVY: 60.0}


class ActionKind(enum.StrEnum):
    """What a device does at a moment of the plan."""

    WRITE = "write"
    DELETE = "delete"
    OFFLINE = "offline"
    ONLINE = "online"


class IncidentKind(enum.StrEnum):
    """The scripted incidents."""

    KAFKA_DEGRADED = "kafka-degraded"
    KAFKA_CUT = "kafka-cut"
    PROJECTOR_KILL = "projector-kill"
    GATEWAY_KILL = "gateway-kill"
    SCHEMA_ROLLOUT = "schema-rollout"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One simulated device."""

    device_id: str
    tenant_id: str
    label: str
    task_versions: tuple[int, ...]
    clock_skew_ms: int

    @property
    def is_legacy(self) -> bool:
        """A build that speaks task v1 only."""
        return max(self.task_versions) == 1

    def versions(self) -> dict[str, list[int]]:
        """What the device announces at handshake."""
        return {"task": list(self.task_versions), "project": [1], "comment": [1]}


@dataclass(frozen=True, slots=True)
class Action:
    """A device's step at `at_s` seconds into the run; `fields` is a write's intent in the newest model."""

    at_s: float
    device_id: str
    kind: ActionKind
    entity_type: str = ""
    entity_id: str = ""
    fields: tuple[tuple[str, Any], ...] = ()
    contended: bool = False  # one of a burst of concurrent edits of the same field

    def fields_dict(self) -> dict[str, Any]:
        """The intent as a dict."""
        return dict(self.fields)

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "at_s": self.at_s,
            "device_id": self.device_id,
            "kind": self.kind.value,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "fields": dict(self.fields),
            "contended": self.contended,
        }


@dataclass(frozen=True, slots=True)
class Incident:
    """A scripted incident: what, when, for how long, with which parameters."""

    kind: IncidentKind
    at_s: float
    duration_s: float
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        """One parameter."""
        return dict(self.params).get(name, default)

    def describe(self) -> str:
        """The incident in words."""
        if self.kind is IncidentKind.KAFKA_DEGRADED:
            return (
                f"gateway→Kafka path degraded for {self.duration_s:.0f}s "
                f"(latency {self.param('latency_ms')}±{self.param('jitter_ms')} ms)"
            )
        if self.kind is IncidentKind.KAFKA_CUT:
            return f"gateway→Kafka path cut for {self.duration_s:.0f}s"
        if self.kind is IncidentKind.PROJECTOR_KILL:
            return f"projector killed (SIGKILL), restarted after {self.duration_s:.0f}s"
        if self.kind is IncidentKind.GATEWAY_KILL:
            return f"gateway killed (SIGKILL), restarted after {self.duration_s:.0f}s"
        return f"task v3 registered and rolled out to tenant {self.param('tenant')}"

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"kind": self.kind.value, "at_s": self.at_s, "duration_s": self.duration_s, "params": dict(self.params)}


@dataclass(frozen=True)
class DemoPlan:
    """The whole script of a run."""

    seed: int
    duration_s: float
    chaos: Chaos
    tenants: tuple[str, ...]
    devices: tuple[DeviceSpec, ...]
    actions: tuple[Action, ...]
    incidents: tuple[Incident, ...]
    rollout_tenant: str | None

    def actions_of(self, device_id: str) -> list[Action]:
        """One device's actions, in time order."""
        return [a for a in self.actions if a.device_id == device_id]

    def device(self, device_id: str) -> DeviceSpec:
        """One device's spec."""
        return next(d for d in self.devices if d.device_id == device_id)

    @property
    def contended_writes(self) -> int:
        """Writes that are part of a burst of concurrent edits."""
        return sum(1 for a in self.actions if a.contended)

    def offline_windows(self) -> dict[str, list[tuple[float, float]]]:
        """Device → [(went offline, came back)], `duration_s` when it comes back only at the end."""
        windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
        since: dict[str, float] = {}
        for action in self.actions:
            if action.kind is ActionKind.OFFLINE:
                since[action.device_id] = action.at_s
            elif action.kind is ActionKind.ONLINE and action.device_id in since:
                windows[action.device_id].append((since.pop(action.device_id), action.at_s))
        for device_id, start in since.items():
            windows[device_id].append((start, self.duration_s))
        return dict(windows)

    def as_json(self) -> dict[str, Any]:
        """JSON form (what the fingerprint hashes)."""
        return {
            "seed": self.seed,
            "duration_s": self.duration_s,
            "chaos": self.chaos.value,
            "tenants": list(self.tenants),
            "devices": [
                {
                    "device_id": d.device_id,
                    "tenant_id": d.tenant_id,
                    "label": d.label,
                    "task_versions": list(d.task_versions),
                    "clock_skew_ms": d.clock_skew_ms,
                }
                for d in self.devices
            ],
            "actions": [a.as_json() for a in self.actions],
            "incidents": [i.as_json() for i in self.incidents],
            "rollout_tenant": self.rollout_tenant,
        }

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form: equal plans, equal fingerprints."""
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def _tenant_names(count: int) -> tuple[str, ...]:
    named = list(TENANT_NAMES[:count])
    named += [f"tenant-{n}" for n in range(len(named) + 1, count + 1)]
    return tuple(named)


def _devices(rng: random.Random, tenants: tuple[str, ...], count: int) -> list[DeviceSpec]:
    specs: list[DeviceSpec] = []
    per_tenant: dict[str, int] = defaultdict(int)
    for n in range(count):
        tenant = tenants[n % len(tenants)]
        index = per_tenant[tenant]
        per_tenant[tenant] += 1
        kind = DEVICE_KINDS[index % len(DEVICE_KINDS)]
        roll = rng.random()
        # The first device of each tenant runs a current build, so every tenant can take the rollout.
        if index > 0 and roll < 0.17:
            versions: tuple[int, ...] = (1,)
        elif index == 0 or roll < 0.8:
            versions = (1, 2, 3)
        else:
            versions = (1, 2)
        skew = 0
        if rng.random() < 0.2:
            skew = rng.choice((-1, 1)) * rng.randint(30_000, MAX_SKEW_MS)
        specs.append(DeviceSpec(f"{tenant}-{kind}-{index + 1:02d}", tenant, f"{kind} {index + 1}", versions, skew))
    return specs


def _offline_actions(rng: random.Random, device: DeviceSpec, duration_s: float, road_warrior: bool) -> list[Action]:
    """Non-overlapping offline windows; a road warrior is away for 35 to 55% of the run."""
    windows: list[tuple[float, float]] = []
    if road_warrior:
        length = duration_s * rng.uniform(0.35, 0.55)
        start = rng.uniform(0.05, 0.95 - length / duration_s) * duration_s
        windows.append((start, start + length))
    elif rng.random() < 0.65:
        for _ in range(rng.randint(1, 3)):
            length = min(duration_s * 0.3, max(3.0, rng.expovariate(1 / (duration_s * 0.1))))
            start = rng.uniform(0.0, duration_s - length)
            if all(start > end + 2.0 or start + length < begin - 2.0 for begin, end in windows):
                windows.append((start, start + length))
    actions: list[Action] = []
    for begin, end in sorted(windows):
        actions.append(Action(round(begin, 3), device.device_id, ActionKind.OFFLINE))
        if end < duration_s - 0.5:  # otherwise it comes back in the final phase, with everyone else
            actions.append(Action(round(end, 3), device.device_id, ActionKind.ONLINE))
    return actions


def _action(at_s: float, device_id: str, edit: Edit, *, contended: bool = False) -> Action:
    kind = ActionKind.DELETE if edit.delete else ActionKind.WRITE
    return Action(at_s, device_id, kind, edit.entity_type, edit.entity_id, edit.fields, contended)


def _incidents(rng: random.Random, chaos: Chaos, duration_s: float, rollout_tenant: str) -> list[Incident]:
    def at(fraction: float) -> float:
        return round(duration_s * (fraction + rng.uniform(-0.015, 0.015)), 2)

    if chaos is Chaos.NONE:
        return []
    d = duration_s
    degrade = (("latency_ms", 300), ("jitter_ms", 200))
    rollout = (("tenant", rollout_tenant), ("entity", "task"), ("version", 3))
    if chaos is Chaos.STANDARD:
        return [
            Incident(IncidentKind.KAFKA_DEGRADED, at(0.12), round(max(3.0, 0.12 * d), 1), degrade),
            Incident(IncidentKind.KAFKA_CUT, at(0.28), round(max(8.0, 0.1 * d), 1)),
            Incident(IncidentKind.PROJECTOR_KILL, at(0.44), 2.0),
            Incident(IncidentKind.SCHEMA_ROLLOUT, at(0.52), 0.0, rollout),
            Incident(IncidentKind.GATEWAY_KILL, at(0.66), 1.5),
        ]
    heavy = (("latency_ms", 800), ("jitter_ms", 600))
    return [
        Incident(IncidentKind.KAFKA_DEGRADED, at(0.08), round(max(4.0, 0.15 * d), 1), heavy),
        Incident(IncidentKind.KAFKA_CUT, at(0.26), round(max(12.0, 0.14 * d), 1)),
        Incident(IncidentKind.PROJECTOR_KILL, at(0.40), 5.0),
        Incident(IncidentKind.SCHEMA_ROLLOUT, at(0.48), 0.0, rollout),
        Incident(IncidentKind.GATEWAY_KILL, at(0.57), 3.0),
        Incident(IncidentKind.PROJECTOR_KILL, at(0.68), 1.0),
        Incident(IncidentKind.KAFKA_CUT, at(0.76), round(max(8.0, 0.06 * d), 1)),
        Incident(IncidentKind.GATEWAY_KILL, at(0.86), 1.0),
    ]


def make_plan(
    seed: int,
    *,
    devices: int = 50,
    tenants: int = 5,
    duration_s: float = 90.0,
    chaos: Chaos | str = Chaos.STANDARD,
    writes_per_device_s: float = 0.2,
) -> DemoPlan:
    """The plan of a run; ValidationError for sizes it cannot honour."""
    chaos = Chaos(chaos)
    if tenants < 1 or devices < 2 * tenants:
        raise ValidationError(f"need at least 2 devices per tenant (got {devices} devices, {tenants} tenants)")
    shortest = MIN_DURATION_S[chaos]
    if not math.isfinite(duration_s) or duration_s < shortest:
        raise ValidationError(
            f"a run with chaos {chaos.value} must last at least {shortest:g} s (got {duration_s:g})", field="duration"
        )
    if not 0 < writes_per_device_s <= 10:
        raise ValidationError("writes per device and second must be within (0, 10]", field="writes_per_device_s")
    rng = random.Random(seed)
    tenant_ids = _tenant_names(tenants)
    specs = _devices(rng, tenant_ids, devices)
    by_tenant: Mapping[str, list[DeviceSpec]] = {t: [d for d in specs if d.tenant_id == t] for t in tenant_ids}
    actions: list[Action] = []
    writing_until = duration_s - 2.0  # the last seconds are for pushes in flight
    for members in by_tenant.values():
        board = TenantBoard()
        owner = members[0].device_id
        for n, edit in enumerate(board.seed(rng, members[0])):
            actions.append(_action(round(0.5 + 0.1 * n, 3), owner, edit))
        road_warrior = rng.choice(members[1:])
        for device in members:
            actions += _offline_actions(rng, device, duration_s, device is road_warrior)
        # Writes, one device at a time in a seeded order, then the contention bursts of the tenant.
        writes: list[tuple[float, DeviceSpec]] = []
        for device in members:
            pace = writes_per_device_s * rng.uniform(0.5, 1.5)
            at = 2.5 + rng.expovariate(pace)
            while at < writing_until:
                writes.append((round(at, 3), device))
                at += rng.expovariate(pace)
        for at, device in sorted(writes, key=lambda w: (w[0], w[1].device_id)):
            actions.append(_action(at, device.device_id, board.edit(rng, device)))
        burst = 4.0 + rng.uniform(0, 2)
        while burst < writing_until - 2:
            for writer, edit in board.contention(rng, members):
                when = round(burst + rng.uniform(0.0, 1.5), 3)  # within 1.5 s: nobody sees the others' write
                actions.append(_action(when, writer.device_id, edit, contended=True))
            burst += rng.uniform(4.0, 8.0)
    rollout_tenant = tenant_ids[rng.randrange(len(tenant_ids))]
    incidents = _incidents(rng, chaos, duration_s, rollout_tenant)
    ordered = sorted(enumerate(actions), key=lambda item: (item[1].at_s, item[1].device_id, item[0]))
    return DemoPlan(
        seed=seed,
        duration_s=duration_s,
        chaos=chaos,
        tenants=tenant_ids,
        devices=tuple(specs),
        actions=tuple(action for _, action in ordered),
        incidents=tuple(incidents),
        rollout_tenant=rollout_tenant if chaos is not Chaos.NONE else None,
    )
