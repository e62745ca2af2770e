"""Abuse limits on a real gateway process: a slow body gets 408 within the deadline, oversized bodies and
batches 413, a fast device 429 — and a thousand oversized requests leave the process's memory where it was."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from producers.wire import HandshakeRequest
from tests.producers.live import ENROLL_SECRET, GatewayProcess, free_port, live_settings
from tests.support.services import Services

pytestmark = pytest.mark.integration
BODY_LIMIT = 64 * 1024
BODY_TIMEOUT_S = 1.5


@pytest.fixture
async def gateway(services: Services, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    settings = live_settings(services)
    process = GatewayProcess(
        settings,
        free_port(),
        tmp_path / "gateway.log",
        KEEL_GATEWAY_MAX_BODY_BYTES=str(BODY_LIMIT),
        KEEL_GATEWAY_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        KEEL_GATEWAY_MAX_BATCH_OPS="50",
        KEEL_GATEWAY_DEVICE_RATE_PER_S="5",
        KEEL_GATEWAY_DEVICE_BURST="60",
    )
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def status_line(reader: asyncio.StreamReader) -> str:
    return (await reader.readline()).decode(errors="replace").strip()


async def test_a_client_dribbling_its_body_gets_408_within_the_deadline(gateway: GatewayProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(
            b"POST /v1/handshake HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        await writer.drain()
        started = time.monotonic()

        async def dribble() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    await asyncio.sleep(0.2)
                    writer.write(b" ")
                    await writer.drain()

        dribbling = asyncio.create_task(dribble())
        line = await asyncio.wait_for(status_line(reader), BODY_TIMEOUT_S + 5)
        elapsed = time.monotonic() - started
        dribbling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dribbling
        assert line.startswith("HTTP/1.1 408"), line
        assert BODY_TIMEOUT_S - 0.3 <= elapsed <= BODY_TIMEOUT_S + 3
        rest = (await asyncio.wait_for(reader.read(4096), 5)).decode(errors="replace").lower()
        assert "connection: close" in rest
        assert '"request-timeout"' in rest
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def session(http: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    """A fresh device's bearer headers and id."""
    device_id = f"abuser-{uuid.uuid4().hex[:8]}"
    enrolled = await http.post(
        "/v1/enroll", json={"tenant_id": "acme", "enrollment_secret": ENROLL_SECRET, "device_id": device_id}
    )
    request = HandshakeRequest(
        tenant_id="acme", device_id=device_id, device_secret=enrolled.json()["device_secret"], versions={"task": [2]}
    )
    token = (await http.post("/v1/handshake", content=request.model_dump_json())).json()["token"]
    return {"authorization": f"Bearer {token}"}, device_id


def unsigned_op(device: str, seq: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "tenant_id": "acme",
        "device_id": device,
        "device_seq": seq,
        "entity_type": "task",
        "entity_id": f"t-{seq}",
        "op": "UPSERT",
        "hlc": {"physical_ms": int(time.time() * 1000), "logical": 0, "node": device},
        "schema_version": 2,
        "changed_fields": ["title"],
        "payload": {"title": "x", "description": "", "due": None, "status": "TODO", "project_id": None, "priority": 0},
    }


async def test_batches_too_large_get_413_and_a_device_pushing_too_fast_429(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        headers, device_id = await session(http)
        too_many = {"ops": [{"device_seq": n} for n in range(1, 52)]}
        refused = await http.post("/v1/push", headers=headers, json=too_many)
        assert (refused.status_code, refused.json()["error"]) == (413, "payload-too-large")
        statuses = []
        for batch in range(3):  # 5 ops/s with a burst of 60: the third batch of 25 finds the bucket short
            ops = [unsigned_op(device_id, 25 * batch + n) for n in range(1, 26)]
            answer = await http.post("/v1/push", headers=headers, json={"ops": ops})
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert int(answer.headers["retry-after"]) >= 1
                assert answer.json()["detail"]["retry_after_ms"] > 0
        assert statuses == [200, 200, 429], statuses


async def test_a_thousand_oversized_requests_leave_the_gateways_memory_where_it_was(gateway: GatewayProcess) -> None:
    assert gateway.process is not None
    process = psutil.Process(gateway.process.pid)
    body = b"x" * (4 * BODY_LIMIT)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        headers, _ = await session(http)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 16_384):
                yield body[start : start + 16_384]

        async def oversized(index: int) -> int:
            if index % 2:  # declared: refused from the Content-Length alone
                response = await http.post("/v1/handshake", content=body, headers={"content-type": "application/json"})
            else:  # chunked: cut off as soon as the limit is passed
                response = await http.post("/v1/push", content=chunks(), headers=headers)
            return response.status_code

        async def wave(count: int, offset: int) -> list[int]:
            gate = asyncio.Semaphore(16)

            async def one(index: int) -> int:
                async with gate:
                    return await oversized(offset + index)

            return await asyncio.gather(*(one(i) for i in range(count)))

        assert set(await wave(100, 0)) == {413}  # warm-up: pools, caches and arenas reach their working size
        before = process.memory_info().rss
        started = time.monotonic()
        assert set(await wave(1_000, 100)) == {413}
        elapsed = time.monotonic() - started
        after = process.memory_info().rss
    growth_mib = (after - before) / 2**20
    assert growth_mib < 16, f"RSS grew by {growth_mib:.1f} MiB over 1000 oversized requests ({elapsed:.1f}s)"
