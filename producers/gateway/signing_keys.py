"""The token signing-key store port: the Ed25519 keys of device tokens, shared by every gateway instance.

A key is *active* from `activates_at_ms` until it is retired; the newest active key signs. A retired key
still verifies the tokens it signed until they expire (the authority adds the token lifetime, the refresh
interval and the clock leeway to `retired_at_ms`); a revoked key verifies nothing at once. Rotation adds
a new key and retires every other one in one step (`rotate_to`), so instances never disagree on more than
which of two valid keys signs. The PostgreSQL adapter is `producers/gateway/signing_keys_pg_adapter.py`;
`InMemorySigningKeyStore` is the fake; both pass tests/producers/gateway/test_signing_keys_contract.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keel.errors import ConfigurationError, ServiceUnavailableError

__all__ = [
    "InMemorySigningKeyStore",
    "SigningKey",
    "SigningKeyStore",
    "describe",
    "jwk_of",
    "key_id",
    "new_signing_key",
    "signing_key_of",
]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(public_key: Ed25519PublicKey, kid: str) -> dict[str, str]:
    """The public JWK (RFC 8037 OKP) of a key, as the JWKS endpoint publishes it."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "alg": "EdDSA", "use": "sig"}


def key_id(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of a public key: a key id that is the same wherever it is computed."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(members.encode()).digest())


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One signing key with its life: active from `activates_at_ms`, then retired or revoked."""

    kid: str
    private_pem: bytes
    created_at_ms: int
    activates_at_ms: int
    retired_at_ms: int | None = None
    revoked_at_ms: int | None = None

    def private_key(self) -> Ed25519PrivateKey:
        """The private key (ConfigurationError if the stored PEM is not an Ed25519 key)."""
        try:
            key = serialization.load_pem_private_key(self.private_pem, password=None)
        except (ValueError, TypeError) as error:
            raise ConfigurationError(f"signing key {self.kid}: unreadable PEM: {error}") from error
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"signing key {self.kid}: not an Ed25519 key")
        return key

    def public_jwk(self) -> dict[str, str]:
        """The public JWK of this key."""
        return jwk_of(self.private_key().public_key(), self.kid)

    def is_active(self, now_ms: int) -> bool:
        """Whether the key may sign now."""
        return self.activates_at_ms <= now_ms and self.retired_at_ms is None and self.revoked_at_ms is None


def signing_key_of(private_key: Ed25519PrivateKey, now_ms: int) -> SigningKey:
    """A `SigningKey` for an existing private key (a static key file), active at once."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningKey(key_id(private_key.public_key()), pem, now_ms, now_ms)


def new_signing_key(now_ms: int) -> SigningKey:
    """A fresh Ed25519 key, active at once."""
    return signing_key_of(Ed25519PrivateKey.generate(), now_ms)


class SigningKeyStore(Protocol):
    """Where the signing keys live."""

    async def keys(self) -> list[SigningKey]:
        """Every stored key (active, retired and revoked), oldest first."""
        ...

    async def add(self, key: SigningKey) -> None:
        """Store a key (no effect if its kid is stored already)."""
        ...

    async def rotate_to(self, key: SigningKey, now_ms: int) -> None:
        """Store `key` and retire every other unretired key at `now_ms`, atomically."""
        ...

    async def revoke(self, kid: str, now_ms: int) -> bool:
        """Revoke a key (False if no such key)."""
        ...

    async def prune(self, before_ms: int) -> list[str]:
        """Delete keys retired or revoked before `before_ms`; their kids."""
        ...


class InMemorySigningKeyStore:
    """`SigningKeyStore` in a dict (one gateway process); `available=False` simulates an outage."""

    def __init__(self, keys: list[SigningKey] | None = None) -> None:
        self._keys: dict[str, SigningKey] = {key.kid: key for key in keys or ()}
        self.available = True

    def _raise_if_down(self) -> None:
        if not self.available:
            raise ServiceUnavailableError("postgresql", "in-memory signing-key store switched off")

    def snapshot(self) -> list[SigningKey]:
        """The keys without awaiting (the authority seeds its cache from a fresh in-memory store)."""
        return sorted(self._keys.values(), key=lambda k: (k.created_at_ms, k.kid))

    async def keys(self) -> list[SigningKey]:
        """Every key, oldest first."""
        self._raise_if_down()
        return self.snapshot()

    async def add(self, key: SigningKey) -> None:
        """Store a key."""
        self._raise_if_down()
        self._keys.setdefault(key.kid, key)

    async def rotate_to(self, key: SigningKey, now_ms: int) -> None:
        """Store `key`, retire the others."""
        self._raise_if_down()
        for kid, old in list(self._keys.items()):
            if kid != key.kid and old.retired_at_ms is None:
                self._keys[kid] = replace(old, retired_at_ms=now_ms)
        self._keys.setdefault(key.kid, key)

    async def revoke(self, kid: str, now_ms: int) -> bool:
        """Revoke a key."""
        self._raise_if_down()
        old = self._keys.get(kid)
        if old is None:
            return False
        if old.revoked_at_ms is None:
            self._keys[kid] = replace(old, revoked_at_ms=now_ms, retired_at_ms=old.retired_at_ms or now_ms)
        return True

    async def prune(self, before_ms: int) -> list[str]:
        """Delete long-retired keys."""
        self._raise_if_down()
        gone = [
            kid
            for kid, key in self._keys.items()
            if (key.retired_at_ms is not None and key.retired_at_ms < before_ms)
            or (key.revoked_at_ms is not None and key.revoked_at_ms < before_ms)
        ]
        for kid in gone:
            del self._keys[kid]
        return sorted(gone)


def describe(key: SigningKey) -> dict[str, Any]:
    """A key without its secret, for listings."""
    return {
        "kid": key.kid,
        "created_at_ms": key.created_at_ms,
        "activates_at_ms": key.activates_at_ms,
        "retired_at_ms": key.retired_at_ms,
        "revoked_at_ms": key.revoked_at_ms,
    }
