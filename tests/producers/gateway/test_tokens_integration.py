"""Device tokens against the real gateway (PostgreSQL key store, two instances): forgeries get 401 with the
reason, another device's token gets 403, and keys rotate under load without one failed request."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from keel.settings import Settings
from producers.gateway.service import GatewayServer
from producers.gateway.signing_keys import SigningKey
from producers.gateway.signing_keys_pg_adapter import PgSigningKeyStore
from producers.wire import HandshakeRequest
from projections.pg_adapter import Pool, connect_pool
from tests.producers.gateway.test_tokens import claims, forge, hs256_with_public_key, unsigned
from tests.producers.live import ENROLL_SECRET, live_settings
from tests.support.services import Services

pytestmark = pytest.mark.integration
KEEL = str(Path(sys.executable).with_name("keel"))


@dataclass
class Gateways:
    """Two gateway instances sharing one schema (and so one key store)."""

    settings: Settings
    urls: list[str]
    pool: Pool

    @property
    def store(self) -> PgSigningKeyStore:
        return PgSigningKeyStore(self.pool, self.settings.pg_schema)

    async def signing_key(self) -> SigningKey:
        [key] = [k for k in await self.store.keys() if k.retired_at_ms is None]
        return key

    def keel(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update({"KEEL_DATABASE_URL": self.settings.database_url, "KEEL_PG_SCHEMA": self.settings.pg_schema})
        return subprocess.run([KEEL, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
async def gateways(services: Services) -> AsyncIterator[Gateways]:
    settings = live_settings(services, gateway_token_keys_refresh_s=0.5, gateway_token_ttl_s=120)
    servers = [GatewayServer(settings), GatewayServer(settings)]
    pool = await connect_pool(settings.database_url, max_size=2)
    try:
        urls = [await server.start() for server in servers]
        yield Gateways(settings, urls, pool)
    finally:
        for server in servers:
            await server.stop()
        await pool.close()


async def session(http: httpx.AsyncClient, device_id: str, tenant_id: str = "acme") -> dict[str, Any]:
    """Enroll (first time) and handshake; the body plus ready-made headers."""
    enrolled = await http.post(
        "/v1/enroll", json={"tenant_id": tenant_id, "enrollment_secret": ENROLL_SECRET, "device_id": device_id}
    )
    assert enrolled.status_code == 201, enrolled.text
    return await handshake(http, device_id, enrolled.json()["device_secret"], tenant_id)


async def handshake(http: httpx.AsyncClient, device_id: str, secret: str, tenant_id: str = "acme") -> dict[str, Any]:
    request = HandshakeRequest(tenant_id=tenant_id, device_id=device_id, device_secret=secret, versions={"task": [2]})
    shaken = await http.post("/v1/handshake", content=request.model_dump_json())
    assert shaken.status_code == 200, shaken.text
    body: dict[str, Any] = shaken.json()
    body["secret"] = secret
    body["headers"] = {"authorization": f"Bearer {body['token']}"}
    return body


def task_op(device_id: str, seq: int, tenant_id: str = "acme") -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "tenant_id": tenant_id,
        "device_id": device_id,
        "device_seq": seq,
        "entity_type": "task",
        "entity_id": f"{device_id}-t{seq}",
        "op": "UPSERT",
        "hlc": {"physical_ms": int(time.time() * 1000), "logical": 0, "node": device_id},
        "schema_version": 2,
        "changed_fields": ["title"],
        "payload": {
            "title": f"t{seq}",
            "description": "",
            "due": None,
            "status": "TODO",
            "project_id": None,
            "priority": 0,
        },
    }


async def test_forged_tokens_are_refused_by_the_real_gateway_with_the_reason(gateways: Gateways) -> None:
    async with httpx.AsyncClient(base_url=gateways.urls[0], timeout=10) as http:
        body = await session(http, "dev-1")
        assert (await http.get("/v1/pull", headers=body["headers"])).status_code == 200
        key = await gateways.signing_key()
        now = int(time.time())
        attacks = {
            "token expired": forge(claims(sub="dev-1", iat=now - 900, exp=now - 120), key),
            "wrong audience": forge(claims(sub="dev-1", aud="another-service"), key),
            "wrong issuer": forge(claims(sub="dev-1", iss="evil-gateway"), key),
            "algorithm 'none' is not allowed": unsigned(claims(sub="dev-1"), key.kid),
            "algorithm 'HS256' is not allowed": hs256_with_public_key(claims(sub="dev-1"), key),
            "unknown signing key id": forge(claims(sub="dev-1"), SigningKey("made-up", key.private_pem, 0, 0)),
        }
        for reason, token in attacks.items():
            for path in ("/v1/pull", "/v1/digest"):
                refused = await http.get(path, headers={"authorization": f"Bearer {token}"})
                assert refused.status_code == 401, (reason, refused.text)
                assert reason in refused.json()["message"], (reason, refused.json())
            pushed = await http.post("/v1/push", headers={"authorization": f"Bearer {token}"}, json={"ops": []})
            assert pushed.status_code == 401, reason


async def test_jwks_rotation_and_revocation_through_the_cli(gateways: Gateways) -> None:
    async with (
        httpx.AsyncClient(base_url=gateways.urls[0], timeout=10) as first,
        httpx.AsyncClient(base_url=gateways.urls[1], timeout=10) as second,
    ):
        body = await session(first, "dev-1")
        old = await gateways.signing_key()
        published = (await second.get("/.well-known/jwks.json")).json()
        assert [k["kid"] for k in published["keys"]] == [old.kid]
        assert jwt.get_unverified_header(body["token"])["kid"] == old.kid

        rotated = gateways.keel("tokens", "rotate", "--json")
        assert rotated.returncode == 0, rotated.stderr
        new_kid = json.loads(rotated.stdout)["kid"]
        await asyncio.sleep(0.6)  # one refresh interval: every instance signs with the new key now
        fresh = await handshake(second, "dev-1", body["secret"])
        assert jwt.get_unverified_header(fresh["token"])["kid"] == new_kid
        for http in (first, second):
            kids = {k["kid"] for k in (await http.get("/.well-known/jwks.json")).json()["keys"]}
            assert kids == {old.kid, new_kid}
            assert (await http.get("/v1/pull", headers=body["headers"])).status_code == 200, "old tokens live on"
            assert (await http.get("/v1/pull", headers=fresh["headers"])).status_code == 200

        revoked = gateways.keel("tokens", "revoke", old.kid)
        assert revoked.returncode == 0, revoked.stderr
        await asyncio.sleep(0.6)
        for http in (first, second):
            refused = await http.get("/v1/pull", headers=body["headers"])
            assert refused.status_code == 401
            assert f"signing key {old.kid} was rotated out" in refused.json()["message"]
            assert (await http.get("/v1/pull", headers=fresh["headers"])).status_code == 200
            assert [k["kid"] for k in (await http.get("/.well-known/jwks.json")).json()["keys"]] == [new_kid]
        listed = gateways.keel("tokens", "list", "--json")
        assert {k["kid"] for k in json.loads(listed.stdout)} == {old.kid, new_kid}
        assert "PRIVATE" not in listed.stdout


async def test_a_token_of_one_device_cannot_push_or_pull_for_another(gateways: Gateways) -> None:
    async with httpx.AsyncClient(base_url=gateways.urls[0], timeout=10) as http:
        mine = await session(http, "dev-a")
        await session(http, "dev-b")
        await session(http, "dev-g", tenant_id="globex")
        for op in (task_op("dev-b", 1), task_op("dev-a", 1, tenant_id="globex")):
            refused = await http.post("/v1/push", headers=mine["headers"], json={"ops": [op]})
            assert (refused.status_code, refused.json()["error"]) == (403, "forbidden"), refused.text
        for params in ({"device_id": "dev-b"}, {"tenant_id": "globex"}):
            refused = await http.get("/v1/pull", headers=mine["headers"], params=params)
            assert refused.status_code == 403
        accepted = await http.post("/v1/push", headers=mine["headers"], json={"ops": [task_op("dev-a", 1)]})
        assert (accepted.status_code, accepted.json()["acked_seq"]) == (200, 1)


async def test_keys_rotate_under_load_without_one_failed_request(gateways: Gateways) -> None:
    statuses: dict[int, int] = {}
    acked: dict[str, int] = {}
    stop = asyncio.Event()

    async def device(index: int) -> None:
        device_id = f"load-{index}"
        clients = [httpx.AsyncClient(base_url=url, timeout=10) for url in gateways.urls]
        try:
            body = await session(clients[index % 2], device_id)
            seq = 0
            while not stop.is_set():
                seq += 1
                # Handshake on one instance, push on the other, pull on the first: tokens cross instances.
                if seq % 5 == 0:
                    body = await handshake(clients[seq % 2], device_id, body["secret"])
                pushed = await clients[(seq + 1) % 2].post(
                    "/v1/push", headers=body["headers"], json={"ops": [task_op(device_id, seq)]}
                )
                pulled = await clients[seq % 2].get("/v1/pull", headers=body["headers"])
                for response in (pushed, pulled):
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if pushed.status_code == 200:
                    acked[device_id] = pushed.json()["acked_seq"]
        finally:
            for client in clients:
                await client.aclose()

    async def rotate() -> None:
        for _ in range(3):
            await asyncio.sleep(1.0)
            rotated = await asyncio.to_thread(gateways.keel, "tokens", "rotate")
            assert rotated.returncode == 0, rotated.stderr
        await asyncio.sleep(1.0)
        stop.set()

    await asyncio.gather(rotate(), *(device(i) for i in range(4)))
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 40
    assert len(await gateways.store.keys()) == 4
    assert all(seq > 5 for seq in acked.values()), acked
