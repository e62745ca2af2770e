"""Device bearer tokens: short-lived JWTs bound to a tenant, a device and its negotiated versions.

The one place tokens are issued and verified (the security issue adds JWKS and key rotation here). Tokens
are signed with Ed25519 (EdDSA, RFC 8037); the key comes from a PEM file or is generated at start, in
which case a restarted gateway no longer accepts older tokens and devices simply handshake again.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keel.errors import AuthError, ConfigurationError

__all__ = ["DeviceClaims", "TokenAuthority", "bearer_token"]

ISSUER = "keel-gateway"
AUDIENCE = "keel-device"
ALGORITHM = "EdDSA"


@dataclass(frozen=True, slots=True)
class DeviceClaims:
    """Who a verified token speaks for, and the schema versions agreed at its handshake."""

    tenant_id: str
    device_id: str
    versions: dict[str, int]
    expires_at_ms: int

    def version_of(self, entity_type: str) -> int | None:
        """The agreed version of an entity type (None if the device does not handle it)."""
        return self.versions.get(entity_type)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer …` header; AuthError when absent or malformed."""
    if not authorization:
        raise AuthError("missing Authorization header (expected 'Bearer <token>')")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed Authorization header (expected 'Bearer <token>')")
    return token.strip()


class TokenAuthority:
    """Issues and verifies device tokens with one Ed25519 key."""

    def __init__(self, private_key: Ed25519PrivateKey, *, ttl_s: int = 900, leeway_s: int = 30) -> None:
        if ttl_s <= 0:
            raise ConfigurationError("token lifetime must be positive")
        self._private = private_key
        self._public = private_key.public_key()
        self.ttl_s = ttl_s
        self._leeway_s = leeway_s

    @classmethod
    def generate(cls, *, ttl_s: int = 900) -> TokenAuthority:
        """An authority with a fresh key (tokens die with the process)."""
        return cls(Ed25519PrivateKey.generate(), ttl_s=ttl_s)

    @classmethod
    def from_pem_file(cls, path: Path, *, ttl_s: int = 900) -> TokenAuthority:
        """An authority with the Ed25519 private key in a PEM file (shared by every gateway instance)."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as error:
            raise ConfigurationError(f"{path}: cannot read an unencrypted PEM private key: {error}") from error
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"{path}: the token signing key must be Ed25519")
        return cls(key, ttl_s=ttl_s)

    def issue(self, tenant_id: str, device_id: str, versions: dict[str, int]) -> tuple[str, int]:
        """A signed token and its expiry (epoch ms)."""
        now = int(time.time())
        expires = now + self.ttl_s
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": device_id,
            "tnt": tenant_id,
            "ver": versions,
            "iat": now,
            "exp": expires,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._private, algorithm=ALGORITHM), expires * 1000

    def verify(self, token: str) -> DeviceClaims:
        """The claims of a valid token; AuthError when it is forged, expired or malformed."""
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway_s,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthError("token expired: handshake again") from error
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token: {error}") from error
        tenant, device, versions = claims.get("tnt"), claims.get("sub"), claims.get("ver")
        if not isinstance(tenant, str) or not isinstance(device, str) or not isinstance(versions, dict):
            raise AuthError("token lacks tenant, device or versions")
        return DeviceClaims(tenant, device, {str(k): int(v) for k, v in versions.items()}, int(claims["exp"]) * 1000)
