"""A device that signs and chains its ops by hand, so tests can tamper with any byte of them."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keel.hlc import HlcTimestamp
from producers.wire import WireEvent
from schemas.envelope import ChangeEvent, Op
from schemas.op_chain import public_key_bytes, seal

TASK_V2 = {"title": "", "description": "", "due": None, "status": "TODO", "project_id": None, "priority": 0}


class SignedDevice:
    """Holds a key and the chain head; `op` seals the next op like the SDK does."""

    def __init__(self, device_id: str, tenant_id: str = "acme") -> None:
        self.device_id = device_id
        self.tenant_id = tenant_id
        self.key = Ed25519PrivateKey.generate()
        self.head: bytes | None = None
        self.seq = 0

    @property
    def public_key(self) -> bytes:
        """Raw public key."""
        return public_key_bytes(self.key)

    def event(self, entity_id: str, seq: int, **fields: Any) -> ChangeEvent:
        """An unsigned task v2 upsert with a complete payload."""
        return ChangeEvent(
            event_id=str(uuid.uuid4()),
            tenant_id=self.tenant_id,
            device_id=self.device_id,
            device_seq=seq,
            entity_type="task",
            entity_id=entity_id,
            op=Op.UPSERT,
            hlc=HlcTimestamp(int(time.time() * 1000), seq, self.device_id),
            schema_version=2,
            payload=TASK_V2 | fields,
            changed_fields=tuple(sorted(fields)),
        )

    def op(
        self, entity_id: str, *, seq: int | None = None, prev: bytes | str | None = "head", **fields: Any
    ) -> ChangeEvent:
        """The next signed op (chained after the head unless `prev` says otherwise); advances head and seq."""
        self.seq = seq if seq is not None else self.seq + 1
        chained_after = self.head if isinstance(prev, str) else prev
        sealed = seal(self.event(entity_id, self.seq, **fields), self.key, chained_after)
        self.head = sealed.hash
        return sealed


def wire(event: ChangeEvent) -> dict[str, Any]:
    """The JSON a device pushes."""
    return WireEvent.of(event).model_dump(mode="json")


def flipped(data: bytes, index: int = 0) -> bytes:
    """`data` with one bit flipped."""
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def altered(event: ChangeEvent, **fields: Any) -> ChangeEvent:
    """The same signed op with payload fields changed after signing (hash and signature kept)."""
    return replace(event, payload={**(event.payload or {}), **fields})
