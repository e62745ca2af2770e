"""The SDK's token refresh: it handshakes again before its token expires, and once more after a 401; no op is
lost or doubled across either."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from producers.device import Device
from tests.producers.support import ENROLL_SECRET, FAST, GATEWAY_URL, FakeKeel, fake_keel


class Recording(httpx.ASGITransport):
    """An in-process transport that remembers every (path, status)."""

    def __init__(self, keel: FakeKeel) -> None:
        super().__init__(app=keel.app)
        self.seen: list[tuple[str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.seen.append((request.url.path, response.status_code))
        return response


async def enroll(keel: FakeKeel, path: Path, transport: httpx.AsyncBaseTransport) -> Device:
    return await Device.enroll(
        path,
        GATEWAY_URL,
        tenant_id="acme",
        enrollment_secret=ENROLL_SECRET,
        versions={"task": [2]},
        config=FAST,
        transport=transport,
    )


async def applied_seqs(keel: FakeKeel, device_id: str) -> list[int]:
    await keel.project()
    return sorted(seq for (device, seq) in keel.store.applied if device == device_id)


async def test_tokens_are_refreshed_before_they_expire_without_a_401(tmp_path: Path) -> None:
    async with fake_keel(gateway_token_ttl_s=2) as keel:
        recording = Recording(keel)
        device = await enroll(keel, tmp_path / "d.db", recording)
        try:
            started = time.monotonic()
            written = 0
            while time.monotonic() - started < 4.5:
                device.upsert("task", f"t-{written}", {"title": f"task {written}"})
                written += 1
                await device.sync()
                await asyncio.sleep(0.2)
            assert device.status().stats.handshakes >= 3, "one handshake per 80 % of the 2 s lifetime"
            assert [status for _, status in recording.seen if status == 401] == []
            assert await applied_seqs(keel, device.device_id) == list(range(1, written + 1))
        finally:
            await device.close()


async def test_a_401_after_a_key_is_revoked_means_one_handshake_and_no_lost_or_doubled_op(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        recording = Recording(keel)
        device = await enroll(keel, tmp_path / "d.db", recording)
        try:
            device.upsert("task", "t-1", {"title": "before"})
            await device.sync()
            assert keel.gateway is not None
            tokens = keel.gateway.tokens
            [old] = await tokens.store.keys()
            await tokens.rotate()
            assert await tokens.store.revoke(old.kid, int(time.time() * 1000))
            await tokens.refresh(force=True)
            device.upsert("task", "t-2", {"title": "after"})
            await device.sync()
            assert ("/v1/push", 401) in recording.seen
            assert device.status().stats.handshakes == 2
            assert await applied_seqs(keel, device.device_id) == [1, 2]
            assert device.status().sent == 2
        finally:
            await device.close()
