"""The gateway's HTTP surface on fakes: status codes a client can act on, body limits, long-polls, SSE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from producers.wire import HandshakeRequest, PullResponse
from tests.producers.support import ENROLL_SECRET, GATEWAY_URL, FakeKeel, fake_keel


@pytest.fixture
async def keel() -> AsyncIterator[FakeKeel]:
    async with fake_keel(gateway_max_body_bytes=64 * 1024) as started:
        yield started


@pytest.fixture
async def client(keel: FakeKeel) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=keel.transport, base_url=GATEWAY_URL) as http:
        yield http


async def session(
    client: httpx.AsyncClient,
    device_id: str = "dev-1",
    versions: dict[str, list[int]] | None = None,
    tenant_id: str = "acme",
) -> dict[str, Any]:
    enrolled = await client.post(
        "/v1/enroll", json={"tenant_id": tenant_id, "enrollment_secret": ENROLL_SECRET, "device_id": device_id}
    )
    assert enrolled.status_code == 201
    secret = enrolled.json()["device_secret"]
    request = HandshakeRequest(
        tenant_id=tenant_id, device_id=device_id, device_secret=secret, versions=versions or {"task": [1, 2]}
    )
    shaken = await client.post("/v1/handshake", content=request.model_dump_json())
    assert shaken.status_code == 200
    body: dict[str, Any] = shaken.json()
    body["headers"] = {"authorization": f"Bearer {body['token']}"}
    return body


async def test_the_openapi_document_names_every_endpoint_and_model(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/healthz",
        "/.well-known/jwks.json",
        "/v1/enroll",
        "/v1/handshake",
        "/v1/push",
        "/v1/pull",
        "/v1/stream",
        "/v1/digest",
        "/v1/entities",
    }
    assert {"PushRequest", "PushResponse", "PullResponse", "WireEvent", "Manifest"} <= set(
        document["components"]["schemas"]
    )
    assert "426" in document["paths"]["/v1/handshake"]["post"]["responses"]


async def test_health_follows_the_lifecycle(keel: FakeKeel, client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "lifecycle": "running"}
    assert keel.gateway is not None
    await keel.gateway.stop()
    stopped = await client.get("/healthz")
    assert (stopped.status_code, stopped.json()["status"]) == (503, "stopped")
    assert (await client.post("/v1/handshake", json={})).status_code == 503


async def test_a_handshake_agrees_versions_and_reports_time_head_and_limits(client: httpx.AsyncClient) -> None:
    before = int(time.time() * 1000)
    body = await session(client, versions={"task": [1, 2, 3], "project": [1]})
    assert body["versions"] == {"task": 2, "project": 1}, "v3 is for the rollout cohort only"
    assert body["unsupported"] == ["comment"]
    assert before <= body["server_time_ms"] <= int(time.time() * 1000)
    assert body["head_seq"] == 0
    assert body["limits"] == {"max_batch_ops": 500, "max_body_bytes": 65_536, "max_op_bytes": 65_536}


async def test_credentials_and_tokens_are_checked(client: httpx.AsyncClient) -> None:
    wrong_enroll = await client.post("/v1/enroll", json={"tenant_id": "acme", "enrollment_secret": "guess"})
    assert (wrong_enroll.status_code, wrong_enroll.json()["error"]) == (403, "forbidden")
    body = await session(client)
    again = await client.post(
        "/v1/enroll", json={"tenant_id": "acme", "enrollment_secret": ENROLL_SECRET, "device_id": "dev-1"}
    )
    assert again.status_code == 400
    wrong = HandshakeRequest(tenant_id="acme", device_id="dev-1", device_secret="nope", versions={"task": [2]})
    assert (await client.post("/v1/handshake", content=wrong.model_dump_json())).status_code == 401
    other_tenant = HandshakeRequest(tenant_id="globex", device_id="dev-1", device_secret="nope", versions={})
    assert (await client.post("/v1/handshake", content=other_tenant.model_dump_json())).status_code == 401
    assert (await client.get("/v1/pull")).status_code == 401
    forged = await client.get("/v1/pull", headers={"authorization": "Bearer abc.def.ghi"})
    assert (forged.status_code, forged.headers["www-authenticate"]) == (401, 'Bearer realm="keel"')
    foreign = await client.get("/v1/pull", params={"device_id": "dev-2"}, headers=body["headers"])
    assert foreign.status_code == 403
    assert (await client.get("/v1/pull", headers=body["headers"])).status_code == 200


async def test_bodies_over_the_limit_are_refused_before_they_are_read(client: httpx.AsyncClient) -> None:
    body = await session(client)
    declared = await client.post("/v1/push", headers=body["headers"] | {"content-length": "10000000"}, content=b"{}")
    assert (declared.status_code, declared.json()["detail"]) == (413, {"limit_bytes": 65_536})
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1_000):
            sent += 1
            yield b" " * 16_384

    chunked = await client.post("/v1/push", headers=body["headers"], content=endless())
    assert chunked.status_code == 413
    assert sent <= 6, "the gateway stopped reading right after the limit"


async def test_malformed_requests_get_a_400_naming_the_problem(client: httpx.AsyncClient) -> None:
    body = await session(client)
    not_json = await client.post("/v1/push", headers=body["headers"], content=b"{nope")
    assert (not_json.status_code, not_json.json()["error"]) == (400, "invalid")
    empty = await client.post("/v1/push", headers=body["headers"], json={"ops": [], "extra": 1})
    assert empty.status_code == 400
    assert "extra" in empty.json()["message"]
    bad_wait = await client.get("/v1/pull", params={"wait_s": "soon"}, headers=body["headers"])
    assert bad_wait.status_code == 400
    bad_cursor = await client.get("/v1/pull", params={"cursor": "x.y"}, headers=body["headers"])
    assert (bad_cursor.status_code, bad_cursor.json()["detail"]) == (400, {"field": "cursor"})


async def test_an_outage_is_a_503_with_retry_after_never_a_500(keel: FakeKeel, client: httpx.AsyncClient) -> None:
    body = await session(client)
    keel.store.available = False
    response = await client.get("/v1/digest", headers=body["headers"])
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.json()["detail"] == {"service": "postgresql"}


async def test_a_long_poll_returns_as_soon_as_the_outbox_grows(keel: FakeKeel, client: httpx.AsyncClient) -> None:
    writer, reader = await session(client, "writer"), await session(client, "reader")
    first = PullResponse.model_validate((await client.get("/v1/pull", headers=reader["headers"])).json())
    assert first.entries == []

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        device_op = {
            "event_id": "6f1f7a52-7a4c-4d3e-9d0e-2f2f3b0c1a11",
            "tenant_id": "acme",
            "device_id": "writer",
            "device_seq": 1,
            "entity_type": "task",
            "entity_id": "t-1",
            "op": "UPSERT",
            "hlc": {"physical_ms": 1, "logical": 0, "node": "writer"},
            "schema_version": 2,
            "changed_fields": ["title"],
            "payload": {"title": "hello"},
        }
        pushed = await client.post("/v1/push", headers=writer["headers"], json={"ops": [device_op]})
        assert pushed.json()["acked_seq"] == 1
        await keel.project()

    started = time.monotonic()
    writing = asyncio.create_task(write_later())
    polled = await client.get("/v1/pull", params={"cursor": first.next_cursor, "wait_s": 10}, headers=reader["headers"])
    await writing
    page = PullResponse.model_validate(polled.json())
    assert time.monotonic() - started < 8  # well before the 10 s wait: the poll was woken, not timed out
    [entry] = page.entries
    assert entry.event is not None
    assert entry.event.payload == {
        "title": "hello",
        "description": "",
        "due": None,
        "status": "TODO",
        "project_id": None,
        "priority": 0,
    }
    assert entry.event.schema_version == 2
    assert page.manifest.count == 1
    assert page.manifest.last_cursor == page.next_cursor


async def test_the_stream_says_hello_then_pokes_when_the_outbox_grows(
    keel: FakeKeel, client: httpx.AsyncClient
) -> None:
    body = await session(client, "listener")
    writer = await session(client, "writer")
    received: list[bytes] = []
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            received.append(str(message["status"]).encode())
        elif message.get("body"):
            received.append(message["body"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/stream",
        "raw_path": b"/v1/stream",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", body["headers"]["authorization"].encode())],
        "client": ("127.0.0.1", 1),
        "server": ("gateway.test", 80),
    }
    serving = asyncio.create_task(keel.app(scope, receive, send))
    await asyncio.sleep(0.2)
    device_op = {
        "event_id": "0b3a4f0e-8b7e-4c59-a0bb-7f1d2c3e4f50",
        "tenant_id": "acme",
        "device_id": "writer",
        "device_seq": 1,
        "entity_type": "task",
        "entity_id": "t-9",
        "op": "DELETE",
        "hlc": {"physical_ms": 5, "logical": 0, "node": "writer"},
        "schema_version": 2,
    }
    await client.post("/v1/push", headers=writer["headers"], json={"ops": [device_op]})
    await keel.project()
    for _ in range(50):
        if any(b"event: poke" in chunk for chunk in received):
            break
        await asyncio.sleep(0.05)
    disconnect.set()
    await asyncio.wait_for(serving, 5)
    assert received[0] == b"200"
    assert b"event: hello" in received[1]
    assert json.loads(received[1].split(b"data: ")[1]) == {"device_id": "listener", "tenant_id": "acme"}
    assert any(b"event: poke" in chunk for chunk in received[2:])
