"""The device directory port: enrolled devices, their credentials and the versions of their last handshake.

Device secrets are 256-bit random values, so a plain SHA-256 is a sufficient verifier (no password
stretching needed); comparisons are constant-time. The PostgreSQL adapter is
`producers/gateway/devices_pg_adapter.py`; `InMemoryDeviceDirectory` is the fake; both pass
tests/producers/gateway/test_devices_contract.py.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from keel.errors import AuthError, ServiceUnavailableError, ValidationError

__all__ = ["DeviceDirectory", "DeviceRecord", "InMemoryDeviceDirectory", "new_secret", "secret_digest"]


def new_secret() -> str:
    """A fresh device secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def secret_digest(secret: str) -> bytes:
    """What the directory stores instead of the secret."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """An enrolled device."""

    tenant_id: str
    device_id: str
    label: str = ""
    versions: dict[str, int] = field(default_factory=dict)


class DeviceDirectory(Protocol):
    """Who may connect."""

    async def enroll(self, tenant_id: str, device_id: str | None, label: str = "") -> tuple[DeviceRecord, str]:
        """Register a device (a new id when None) and return it with its secret; ValidationError if taken."""
        ...

    async def authenticate(self, tenant_id: str, device_id: str, secret: str) -> DeviceRecord:
        """The device if the secret is right; AuthError otherwise (unknown, wrong tenant or wrong secret)."""
        ...

    async def record_handshake(self, device_id: str, versions: dict[str, int]) -> None:
        """Remember the versions a device agreed on (the outbox and operators read them)."""
        ...

    async def get(self, device_id: str) -> DeviceRecord | None:
        """One device, or None."""
        ...


@dataclass
class _Entry:
    record: DeviceRecord
    digest: bytes


class InMemoryDeviceDirectory:
    """`DeviceDirectory` in a dict; `available=False` simulates an outage."""

    def __init__(self) -> None:
        self._devices: dict[str, _Entry] = {}
        self.available = True

    def _raise_if_down(self) -> None:
        if not self.available:
            raise ServiceUnavailableError("postgresql", "in-memory device directory switched off")

    async def enroll(self, tenant_id: str, device_id: str | None, label: str = "") -> tuple[DeviceRecord, str]:
        """Register a device."""
        self._raise_if_down()
        chosen = device_id or str(uuid.uuid4())
        if chosen in self._devices:
            raise ValidationError(f"device {chosen} is already enrolled", field="device_id")
        secret = new_secret()
        record = DeviceRecord(tenant_id, chosen, label)
        self._devices[chosen] = _Entry(record, secret_digest(secret))
        return record, secret

    async def authenticate(self, tenant_id: str, device_id: str, secret: str) -> DeviceRecord:
        """Check a device's secret."""
        self._raise_if_down()
        entry = self._devices.get(device_id)
        expected = entry.digest if entry is not None else secret_digest(new_secret())
        matches = hmac.compare_digest(expected, secret_digest(secret))
        if entry is None or not matches or entry.record.tenant_id != tenant_id:
            raise AuthError("unknown device or wrong secret")
        return entry.record

    async def record_handshake(self, device_id: str, versions: dict[str, int]) -> None:
        """Remember agreed versions."""
        self._raise_if_down()
        entry = self._devices.get(device_id)
        if entry is not None:
            old = entry.record
            entry.record = DeviceRecord(old.tenant_id, old.device_id, old.label, dict(versions))

    async def get(self, device_id: str) -> DeviceRecord | None:
        """One device."""
        self._raise_if_down()
        entry = self._devices.get(device_id)
        return entry.record if entry is not None else None
