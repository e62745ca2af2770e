"""Device bearer tokens: short-lived JWTs bound to a tenant, a device and its negotiated versions.

The one place tokens are issued and verified. Tokens are signed with Ed25519 (EdDSA, RFC 8037), carry the
key id (`kid`) in their header, and live at most 15 minutes. Verification is strict and its refusals say
why: the algorithm is pinned before anything else is read (`alg=none`, HS256 signed with the public key's
bytes and every other algorithm are refused by name), the key is chosen by `kid` among the keys that may
still verify, and issuer, audience, expiry, issue time and the lifetime are checked.

Keys come from a `SigningKeyStore` shared by every gateway instance (PostgreSQL in production) and are
cached; the cache is re-read every `refresh_s` seconds, and at once (at most once a second) when a token
names a kid the cache does not know — so a key another instance just rotated to verifies everywhere
without waiting. A retired key verifies until `retired_at + ttl + refresh + leeway`: an instance that had
not yet seen the rotation may have signed with it until its next refresh, and those tokens stay good until
they expire. A static key file (`KEEL_GATEWAY_SIGNING_KEY_FILE`) or a generated key seed an in-memory
store instead (single instance; rotation means a restart).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keel.errors import AuthError, ConfigurationError, TransientError
from keel.logging import get_logger
from producers.gateway.signing_keys import (
    InMemorySigningKeyStore,
    SigningKey,
    SigningKeyStore,
    new_signing_key,
    signing_key_of,
)

__all__ = ["ALGORITHM", "AUDIENCE", "ISSUER", "MAX_TTL_S", "DeviceClaims", "TokenAuthority", "bearer_token"]

ISSUER = "keel-gateway"
AUDIENCE = "keel-device"
ALGORITHM = "EdDSA"
MAX_TTL_S = 900  # 15 minutes: a stolen token is worth little, and a refresh costs one handshake
_log = get_logger("gateway.tokens")


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


@dataclass(frozen=True, slots=True)
class _KeySet:
    """The cached view of the store: who signs, who verifies, who was rotated out."""

    signer: SigningKey | None
    verifiers: dict[str, Ed25519PublicKey]
    rotated_out: frozenset[str]
    jwks: tuple[dict[str, str], ...]


class TokenAuthority:
    """Issues and verifies device tokens with the keys of a `SigningKeyStore`."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey | None = None,
        *,
        store: SigningKeyStore | None = None,
        ttl_s: int = MAX_TTL_S,
        leeway_s: int = 30,
        refresh_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ConfigurationError(f"token lifetime must be 1..{MAX_TTL_S} s, not {ttl_s}")
        if refresh_s <= 0:
            raise ConfigurationError("the key refresh interval must be positive")
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self._leeway_s = leeway_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._loaded_at = float("-inf")
        self._forced_at = float("-inf")
        if store is None:
            seeded = InMemorySigningKeyStore([signing_key_of(private_key or Ed25519PrivateKey.generate(), 0)])
            self._store: SigningKeyStore = seeded
            self._keys = self._key_set(seeded.snapshot())
            self._loaded_at = self._monotonic()
        else:
            if private_key is not None:
                raise ConfigurationError("give a private key or a key store, not both")
            self._store = store
            self._keys = _KeySet(None, {}, frozenset(), ())

    @classmethod
    def generate(cls, *, ttl_s: int = MAX_TTL_S) -> TokenAuthority:
        """An authority with a fresh in-memory key (tokens die with the process)."""
        return cls(Ed25519PrivateKey.generate(), ttl_s=ttl_s)

    @classmethod
    def from_pem_file(cls, path: Path, *, ttl_s: int = MAX_TTL_S) -> TokenAuthority:
        """An authority with the Ed25519 private key in a PEM file (a static key: rotation means a restart)."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as error:
            raise ConfigurationError(f"{path}: cannot read an unencrypted PEM private key: {error}") from error
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"{path}: the token signing key must be Ed25519")
        return cls(key, ttl_s=ttl_s)

    @property
    def store(self) -> SigningKeyStore:
        """The key store behind this authority."""
        return self._store

    def _monotonic(self) -> float:
        return time.monotonic()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def grace_ms(self) -> int:
        """How long a retired key keeps verifying after its retirement."""
        return int((self.ttl_s + self.refresh_s + self._leeway_s) * 1000)

    def _key_set(self, keys: list[SigningKey]) -> _KeySet:
        now = self._now_ms()
        active = [key for key in keys if key.is_active(now)]
        signer = max(active, key=lambda k: (k.activates_at_ms, k.created_at_ms, k.kid), default=None)
        verifiers: dict[str, Ed25519PublicKey] = {}
        rotated_out = set()
        jwks = []
        for key in keys:
            retired_for = None if key.retired_at_ms is None else now - key.retired_at_ms
            if key.revoked_at_ms is not None or (retired_for is not None and retired_for > self.grace_ms):
                rotated_out.add(key.kid)
                continue
            public = key.private_key().public_key()
            verifiers[key.kid] = public
            jwks.append(key.public_jwk())
        return _KeySet(signer, verifiers, frozenset(rotated_out), tuple(jwks))

    async def start(self) -> None:
        """Load the keys; create and store a first one when the store has no active key."""
        await self.refresh(force=True)
        if self._keys.signer is None:
            await self._store.add(new_signing_key(self._now_ms()))
            await self.refresh(force=True)
            _log.info("token signing key created", kid=self._keys.signer.kid if self._keys.signer else None)

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read the store if the cache is older than `refresh_s` (or now, when forced)."""
        async with self._lock:
            moment = self._monotonic()
            if not force and moment - self._loaded_at < self.refresh_s:
                return
            try:
                keys = await self._store.keys()
            except TransientError as error:
                if not self._keys.verifiers:
                    raise
                # The store is down: keep verifying with the keys we have, try again in a second.
                self._loaded_at = moment - self.refresh_s + 1.0
                _log.warning("token keys not refreshed; using the cached ones", error=str(error))
                return
            self._keys = self._key_set(keys)
            self._loaded_at = self._monotonic()

    async def _refresh_for_unknown_kid(self) -> None:
        moment = self._monotonic()
        if moment - self._forced_at < 1.0:
            return  # a flood of made-up kids must not become a flood of store reads
        self._forced_at = moment
        await self.refresh(force=True)

    async def rotate(self) -> SigningKey:
        """Start signing with a new key; the old ones verify until their tokens expire."""
        key = new_signing_key(self._now_ms())
        await self._store.rotate_to(key, self._now_ms())
        await self.refresh(force=True)
        _log.info("token signing key rotated", kid=key.kid)
        return key

    async def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set of every key that may verify a token now."""
        await self.refresh()
        return {"keys": [dict(jwk) for jwk in self._keys.jwks]}

    async def issue(self, tenant_id: str, device_id: str, versions: dict[str, int]) -> tuple[str, int]:
        """A signed token and its expiry (epoch ms)."""
        await self.refresh()
        signer = self._keys.signer
        if signer is None:
            raise ConfigurationError("no active token signing key (run `keel tokens rotate`)")
        now = int(self._clock())
        expires = now + self.ttl_s
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": device_id,
            "tnt": tenant_id,
            "ver": versions,
            "iat": now,
            "nbf": now,
            "exp": expires,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": signer.kid, "typ": "JWT"}
        return jwt.encode(claims, signer.private_key(), algorithm=ALGORITHM, headers=headers), expires * 1000

    async def _public_key(self, token: str) -> Ed25519PublicKey:
        """The key to verify `token` with, chosen by its header: only EdDSA, only a kid we may trust."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token: {error}") from error
        algorithm = header.get("alg")
        if algorithm != ALGORITHM:
            raise AuthError(f"invalid token: algorithm {algorithm!r} is not allowed (only {ALGORITHM})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("invalid token: no key id (kid) in its header")
        await self.refresh()
        if kid not in self._keys.verifiers and kid not in self._keys.rotated_out:
            await self._refresh_for_unknown_kid()
        if kid in self._keys.rotated_out:
            raise AuthError(f"invalid token: signing key {kid} was rotated out: handshake again")
        public = self._keys.verifiers.get(kid)
        if public is None:
            raise AuthError(f"invalid token: unknown signing key id {kid!r}")
        return public

    async def verify(self, token: str) -> DeviceClaims:
        """The claims of a valid token; AuthError saying why when it is forged, expired or malformed."""
        public = await self._public_key(token)
        try:
            claims = jwt.decode(
                token,
                public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway_s,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthError("token expired: handshake again") from error
        except jwt.InvalidAudienceError as error:
            raise AuthError(f"invalid token: wrong audience (expected {AUDIENCE!r})") from error
        except jwt.InvalidIssuerError as error:
            raise AuthError(f"invalid token: wrong issuer (expected {ISSUER!r})") from error
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token: {error}") from error
        issued, expires = claims["iat"], claims["exp"]
        if not isinstance(issued, int | float) or expires - issued > MAX_TTL_S:
            raise AuthError(f"invalid token: lifetime over {MAX_TTL_S} s")
        tenant, device, versions = claims.get("tnt"), claims.get("sub"), claims.get("ver")
        if not isinstance(tenant, str) or not isinstance(device, str) or not isinstance(versions, dict):
            raise AuthError("token lacks tenant, device or versions")
        try:
            agreed = {str(k): int(v) for k, v in versions.items()}
        except (TypeError, ValueError) as error:
            raise AuthError("token versions are not entity → version numbers") from error
        return DeviceClaims(tenant, device, agreed, int(expires) * 1000)
