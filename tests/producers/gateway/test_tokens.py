"""Device tokens on their own: every forgery is refused with the reason, keys rotate and retire on time."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keel.errors import AuthError, ConfigurationError, ServiceUnavailableError
from producers.gateway.signing_keys import InMemorySigningKeyStore, SigningKey
from producers.gateway.tokens import AUDIENCE, ISSUER, MAX_TTL_S, TokenAuthority


class Clock:
    """A settable wall clock (seconds)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "dev-1",
        "tnt": "acme",
        "ver": {"task": 2},
        "iat": now,
        "exp": now + 600,
    }
    body.update(overrides)
    return body


def forge(body: dict[str, Any], key: SigningKey, **headers: Any) -> str:
    """A token signed with a genuine key, with whatever claims and headers an attacker likes."""
    return jwt.encode(body, key.private_key(), algorithm="EdDSA", headers={"kid": key.kid, **headers})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(body: dict[str, Any], kid: str) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}."


def hs256_with_public_key(body: dict[str, Any], key: SigningKey) -> str:
    """Algorithm confusion: an HMAC token keyed with the public key bytes anyone can read from the JWKS."""
    public = key.private_key().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = b64(json.dumps(body).encode())
    signature = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


async def authority(clock: Clock, **options: Any) -> TokenAuthority:
    started = TokenAuthority(store=InMemorySigningKeyStore(), clock=clock, **options)
    await started.start()
    return started


async def active_key(tokens: TokenAuthority) -> SigningKey:
    keys = [key for key in await tokens.store.keys() if key.retired_at_ms is None]
    assert len(keys) == 1
    return keys[0]


async def test_an_issued_token_carries_tenant_device_versions_and_its_key_id() -> None:
    clock = Clock()
    tokens = await authority(clock, ttl_s=600)
    token, expires_at_ms = await tokens.issue("acme", "dev-1", {"task": 2})
    header = jwt.get_unverified_header(token)
    key = await active_key(tokens)
    assert (header["alg"], header["kid"], header["typ"]) == ("EdDSA", key.kid, "JWT")
    verified = await tokens.verify(token)
    assert (verified.tenant_id, verified.device_id, verified.versions) == ("acme", "dev-1", {"task": 2})
    assert verified.expires_at_ms == expires_at_ms
    assert abs(expires_at_ms - (clock.now + 600) * 1000) < 2_000
    jwks = await tokens.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [key.kid]
    assert jwks["keys"][0] | {"x": "…"} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": key.kid,
        "x": "…",
    }


async def test_lifetimes_over_fifteen_minutes_are_refused_at_configuration_and_in_tokens() -> None:
    with pytest.raises(ConfigurationError, match=r"1\.\.900"):
        TokenAuthority.generate(ttl_s=MAX_TTL_S + 1)
    tokens = await authority(Clock())
    key = await active_key(tokens)
    now = int(time.time())
    with pytest.raises(AuthError, match="lifetime over 900 s"):
        await tokens.verify(forge(claims(iat=now, exp=now + 3_600), key))


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("expired", "token expired"),
        ("wrong-audience", "wrong audience"),
        ("wrong-issuer", "wrong issuer"),
        ("alg-none", "algorithm 'none' is not allowed"),
        ("hs256-confusion", "algorithm 'HS256' is not allowed"),
        ("unknown-kid", "unknown signing key id"),
        ("no-kid", "no key id"),
        ("other-key", "Signature verification failed"),
        ("not-a-jwt", "invalid token"),
    ],
)
async def test_each_forgery_is_refused_with_its_reason(attack: str, reason: str) -> None:
    tokens = await authority(Clock())
    key = await active_key(tokens)
    now = int(time.time())
    stranger = SigningKey(
        key.kid,
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        0,
        0,
    )
    token = {
        "expired": lambda: forge(claims(iat=now - 900, exp=now - 120), key),
        "wrong-audience": lambda: forge(claims(aud="someone-else"), key),
        "wrong-issuer": lambda: forge(claims(iss="evil-gateway"), key),
        "alg-none": lambda: unsigned(claims(), key.kid),
        "hs256-confusion": lambda: hs256_with_public_key(claims(), key),
        "unknown-kid": lambda: forge(claims(), SigningKey("made-up", key.private_pem, 0, 0)),
        "no-kid": lambda: jwt.encode(claims(), key.private_key(), algorithm="EdDSA"),
        "other-key": lambda: forge(claims(), stranger),
        "not-a-jwt": lambda: "abc.def.ghi",
    }[attack]()
    with pytest.raises(AuthError, match=reason):
        await tokens.verify(token)


async def test_a_rotated_key_verifies_until_its_tokens_expire_then_is_rotated_out() -> None:
    clock = Clock()
    tokens = await authority(clock, ttl_s=300, refresh_s=10)
    old_token, _ = await tokens.issue("acme", "dev-1", {})
    old = await active_key(tokens)
    new = await tokens.rotate()
    new_token, _ = await tokens.issue("acme", "dev-1", {})
    assert jwt.get_unverified_header(new_token)["kid"] == new.kid != old.kid
    assert {k["kid"] for k in (await tokens.jwks())["keys"]} == {old.kid, new.kid}
    assert (await tokens.verify(old_token)).device_id == "dev-1"
    clock.now += tokens.grace_ms / 1000 + 1
    await tokens.refresh(force=True)
    with pytest.raises(AuthError, match=f"signing key {old.kid} was rotated out"):
        await tokens.verify(forge(claims(iat=int(clock.now), exp=int(clock.now) + 60), old))
    assert [k["kid"] for k in (await tokens.jwks())["keys"]] == [new.kid]


async def test_a_revoked_key_verifies_nothing_at_once() -> None:
    tokens = await authority(Clock())
    token, _ = await tokens.issue("acme", "dev-1", {})
    key = await active_key(tokens)
    await tokens.rotate()
    assert await tokens.store.revoke(key.kid, int(time.time() * 1000))
    await tokens.refresh(force=True)
    with pytest.raises(AuthError, match="rotated out"):
        await tokens.verify(token)


async def test_a_key_another_instance_rotated_to_verifies_without_waiting_for_the_refresh() -> None:
    clock = Clock()
    shared = InMemorySigningKeyStore()
    first = TokenAuthority(store=shared, clock=clock, refresh_s=3_600)
    second = TokenAuthority(store=shared, clock=clock, refresh_s=3_600)
    await first.start()
    await second.start()
    await first.rotate()
    token, _ = await first.issue("acme", "dev-1", {})
    assert (await second.verify(token)).device_id == "dev-1"
    old_token, _ = await second.issue("acme", "dev-2", {})  # second still signs with the old key until it refreshes
    assert (await first.verify(old_token)).device_id == "dev-2"


async def test_made_up_key_ids_cost_at_most_one_store_read_a_second() -> None:
    reads = 0
    store = InMemorySigningKeyStore()
    original = store.keys

    async def counted() -> list[SigningKey]:
        nonlocal reads
        reads += 1
        return await original()

    store.keys = counted  # type: ignore[method-assign]
    tokens = TokenAuthority(store=store, refresh_s=3_600)
    await tokens.start()
    key = await active_key(tokens)
    before = reads
    for index in range(50):
        with pytest.raises(AuthError, match="unknown signing key id"):
            await tokens.verify(forge(claims(), SigningKey(f"kid-{index}", key.private_pem, 0, 0)))
    assert reads - before <= 2


async def test_an_outage_of_the_key_store_keeps_the_cached_keys_verifying() -> None:
    store = InMemorySigningKeyStore()
    tokens = TokenAuthority(store=store, refresh_s=0.01)
    await tokens.start()
    token, _ = await tokens.issue("acme", "dev-1", {})
    store.available = False
    await asyncio.sleep(0.02)  # the cache is stale: the next use tries the store
    assert (await tokens.verify(token)).device_id == "dev-1"
    cold = TokenAuthority(store=store)
    with pytest.raises(ServiceUnavailableError):
        await cold.start()
