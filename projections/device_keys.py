"""The device-key registry port: each device's Ed25519 public keys and the seq each one signs from.

A device registers its first key at enrolment (`from_seq` 1) and may rotate to a new one later (`from_seq`
above everything it has sent, proven with the old key); the op at seq N is verified with the key of the
greatest `from_seq` <= N. Keys are never updated or deleted, so a cache of them only ever misses. The
PostgreSQL adapter is `projections/device_keys_pg_adapter.py`; `InMemoryDeviceKeyRegistry` is the fake;
both pass tests/projections/test_device_keys_contract.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from keel.errors import ServiceUnavailableError, ValidationError

__all__ = ["DeviceKey", "DeviceKeyRegistry", "InMemoryDeviceKeyRegistry", "key_for_seq"]


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """One public key of one device, valid from `from_seq` on."""

    tenant_id: str
    device_id: str
    public_key: bytes
    from_seq: int = 1


def key_for_seq(keys: Sequence[DeviceKey], seq: int) -> DeviceKey | None:
    """The key that signs `seq` (None when the device had no key yet at that seq)."""
    chosen = None
    for key in keys:
        if key.from_seq <= seq and (chosen is None or key.from_seq > chosen.from_seq):
            chosen = key
    return chosen


class DeviceKeyRegistry(Protocol):
    """Registered device keys."""

    async def register(self, key: DeviceKey) -> None:
        """Add a key; ValidationError if a key at or after `from_seq` exists (the very same key: no-op)."""
        ...

    async def keys_of(self, device_id: str) -> list[DeviceKey]:
        """A device's keys, by `from_seq` (empty for a device that never registered one)."""
        ...


class InMemoryDeviceKeyRegistry:
    """`DeviceKeyRegistry` in a dict; `available=False` simulates an outage."""

    def __init__(self) -> None:
        self._keys: dict[str, list[DeviceKey]] = {}
        self.available = True

    def _raise_if_down(self) -> None:
        if not self.available:
            raise ServiceUnavailableError("postgresql", "in-memory device-key registry switched off")

    async def register(self, key: DeviceKey) -> None:
        """Add a key."""
        self._raise_if_down()
        known = self._keys.setdefault(key.device_id, [])
        if key in known:
            return
        newest = max((k.from_seq for k in known), default=0)
        if key.from_seq <= newest:
            raise ValidationError(
                f"device {key.device_id} already has a key from seq {newest}; a new key must start after it",
                field="public_key",
            )
        known.append(key)

    async def keys_of(self, device_id: str) -> list[DeviceKey]:
        """A device's keys."""
        self._raise_if_down()
        return sorted(self._keys.get(device_id, ()), key=lambda k: k.from_seq)
