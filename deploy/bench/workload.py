"""The events every stage of `keel bench` sends: task upserts of a chosen payload size, as devices write them.

Deterministic for a seed, so each repetition (and each baseline) works on exactly the same records. Payloads
stay valid under `schemas.validation` at every size: text up to the field limits, the rest in labels (at most
20 items, no length limit per item), which is how a 100 KB task fits the catalog.
"""

from __future__ import annotations

import functools
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keel.hlc import HlcTimestamp, wall_clock_ms
from producers.wire import WireEvent
from projections.outbox import event_body
from schemas.envelope import ChangeEvent, Op
from schemas.op_chain import seal

__all__ = [
    "LARGE_VERSION",
    "TASK_VERSION",
    "DeviceStream",
    "Workload",
    "push_body",
    "task_payload",
    "traceparent",
    "wire_ops",
]

TASK_VERSION = 2  # what devices speak: task's stable version (v3 is rolled out to a cohort only)
LARGE_VERSION = 3  # payloads past ~10 KB need v3's labels: v2's text fields are capped at 10,000 characters
_MAX_DESCRIPTION = 9_000  # below schemas.validation's 10,000-character limit
_MAX_LABELS = 20


@functools.lru_cache(maxsize=64)
def _filler(size_bytes: int, version: int) -> tuple[str, tuple[str, ...]]:
    """(description, labels) that bring a payload of `version` to about `size_bytes` of JSON."""
    payload = _fixed_fields(0, version)
    filler = max(0, size_bytes - len(json.dumps(payload)))
    description = "d" * min(filler, _MAX_DESCRIPTION)
    rest = filler - len(description)
    if rest > 0 and version < 3:
        raise ValueError(f"task v{version} payloads stay below ~9 KB; use v3 for {size_bytes} bytes")
    if rest <= 0:
        return description, ()
    per_label = -(-rest // _MAX_LABELS) + 1
    return description, tuple("l" * max(1, min(per_label, rest - done) - 4) for done in range(0, rest, per_label))


def _fixed_fields(index: int, version: int) -> dict[str, Any]:
    payload: dict[str, Any] = {  # every field of the version: signed ops must be complete (docs/security.md)
        "title": f"task {index}",
        "description": "",
        "due": None,
        "status": ("TODO", "DOING", "DONE")[index % 3],
        "project_id": f"p-{index % 17}",
        "priority": index % 4,
    }
    if version >= 3:
        payload["due_at"] = 1_760_000_000_000 + index
        payload["labels"] = []
    return payload


def task_payload(index: int, size_bytes: int = 160, version: int = TASK_VERSION) -> dict[str, Any]:
    """A task payload of `version` whose JSON is about `size_bytes` long (at least ~90 bytes of fixed fields).

    Past ~9 KB the rest goes into labels, which only v3 has (ValueError for v2).
    """
    payload = _fixed_fields(index, version)
    description, labels = _filler(size_bytes, version)
    payload["description"] = description
    if labels:
        payload["labels"] = list(labels)
    return payload


@dataclass
class DeviceStream:
    """One device's ops: consecutive seqs from 1, each a task upsert of an entity of its tenant."""

    tenant_id: str
    device_id: str
    entities: int
    payload_bytes: int
    seed: int
    version: int = TASK_VERSION
    signing_key: Ed25519PrivateKey | None = None  # set: ops are chained, hashed and signed like the SDK's
    seq: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._previous_hash: bytes | None = None

    def next_event(self, now_ms: int | None = None) -> ChangeEvent:
        """The device's next op (clock at `now_ms`, default the wall clock)."""
        self.seq += 1
        stamp = now_ms if now_ms is not None else wall_clock_ms()
        entity = self._rng.randrange(self.entities)
        event = ChangeEvent(
            event_id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            tenant_id=self.tenant_id,
            device_id=self.device_id,
            device_seq=self.seq,
            entity_type="task",
            entity_id=f"task-{entity}",
            op=Op.UPSERT,
            hlc=HlcTimestamp(stamp, self.seq % 1000, self.device_id),
            schema_version=self.version,
            payload=task_payload(self.seq, self.payload_bytes, self.version),
            changed_fields=("priority", "status", "title"),
            base_hlc=HlcTimestamp(stamp - 1, 0, self.device_id),  # it had seen everything up to a moment ago
        )
        if self.signing_key is None:
            return event
        sealed = seal(event, self.signing_key, self._previous_hash)
        self._previous_hash = sealed.hash
        return sealed

    def take(self, count: int, now_ms: int | None = None) -> list[ChangeEvent]:
        """The next `count` ops."""
        return [self.next_event(now_ms) for _ in range(count)]


@dataclass(frozen=True)
class Workload:
    """`devices` devices of `tenants` tenants, each tenant with `entities` tasks, payloads of `payload_bytes`."""

    devices: int = 32
    tenants: int = 4
    entities: int = 2_000
    payload_bytes: int = 160
    seed: int = 7
    tag: str = "bench"
    version: int = TASK_VERSION

    def streams(self) -> list[DeviceStream]:
        """One stream per device (fresh: seqs start at 1)."""
        return [
            DeviceStream(
                tenant_id=f"{self.tag}-tenant-{index % self.tenants}",
                device_id=f"{self.tag}-device-{index}",
                entities=self.entities,
                payload_bytes=self.payload_bytes,
                seed=self.seed * 100_003 + index,
                version=self.version,
            )
            for index in range(self.devices)
        ]

    def events(self, count: int, now_ms: int | None = None) -> list[ChangeEvent]:
        """`count` events interleaved round-robin over the devices (each device's seqs in order)."""
        streams = self.streams()
        return [streams[index % len(streams)].next_event(now_ms) for index in range(count)]

    def batches(self, count: int, batch: int, now_ms: int | None = None) -> Iterator[list[ChangeEvent]]:
        """`count` events as per-device batches of `batch` ops, devices taking turns."""
        streams = self.streams()
        made = 0
        turn = 0
        while made < count:
            size = min(batch, count - made)
            yield streams[turn % len(streams)].take(size, now_ms)
            made += size
            turn += 1


def wire_ops(events: list[ChangeEvent]) -> list[dict[str, Any]]:
    """The JSON ops a device sends for `events`: `WireEvent.of(event).model_dump(mode="json")`, built directly.

    The SDK goes through its pydantic model; the load generator shares two cores with the services it
    measures, so it builds the same dicts without the model (tests/deploy/bench checks they are equal).
    """
    return [_wire_op(event) for event in events]


def _wire_op(event: ChangeEvent) -> dict[str, Any]:
    if event.override is not None:
        return WireEvent.of(event).model_dump(mode="json")
    # Without an override, the push wire form of an op is the outbox's normalized JSON of the event.
    return event_body(event)


def traceparent(*, sampled: bool = True) -> str:
    """A W3C traceparent with random ids, like the one each op's capture span gives it on a device."""
    return f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-{'01' if sampled else '00'}"


def push_body(events: list[ChangeEvent], *, traced: bool = True, sampled: bool = True) -> bytes:
    """The body of `POST /v1/push` for `events`: what the SDK's `GatewayClient.push` sends, as compact JSON.

    `traced`: each op carries the traceparent of its capture, as the SDK sends it (with the default sample
    ratio of 1 every trace is `sampled`), so the gateway continues each op's trace with a produce span.
    """
    traces = {str(event.device_seq): traceparent(sampled=sampled) for event in events} if traced else {}
    body = {"ops": wire_ops(events), "abandoned": [], "traces": traces}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
