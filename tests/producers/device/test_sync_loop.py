"""The sync loop against the gateway on fakes: 413 splits, 429 waits, 503 backs off, 401 re-handshakes,
rejections quarantine without stalling the queue, manifests are checked, gaps are re-sent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from keel.errors import UpgradeRequiredError
from producers.device import Device, SyncState
from producers.gateway.push_ledger import InMemoryPushLedger, Outcome
from producers.gateway.tokens import TokenAuthority
from schemas.catalog import default_catalog
from tests.producers.support import FAST, FakeKeel, fake_keel

Hook = Callable[[httpx.Request, httpx.Response | None], httpx.Response | None]


class Tampering(httpx.AsyncBaseTransport):
    """Serves through another transport; `hook(request, None)` may answer instead of the gateway and
    `hook(request, response)` may replace its answer (None keeps it)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, hook: Hook) -> None:
        self.inner = inner
        self.hook = hook

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        instead = self.hook(request, None)
        if instead is not None:
            return instead
        response = await self.inner.handle_async_request(request)
        await response.aread()
        replaced = self.hook(request, response)
        return replaced if replaced is not None else response


async def device_with(keel: FakeKeel, path: Path, hook: Hook) -> Device:
    device = await keel.device(path)
    device.client._http._transport = Tampering(keel.transport, hook)
    return device


async def test_an_op_too_large_for_any_request_is_quarantined_and_does_not_block_the_queue(tmp_path: Path) -> None:
    async with fake_keel(gateway_max_body_bytes=4_000) as keel:
        device = await keel.device(tmp_path / "d.db")
        try:
            device.upsert("task", "small-1", {"title": "fits"})
            device.upsert("task", "huge", {"description": "x" * 6_000})
            device.upsert("task", "small-2", {"title": "fits too"})
            await device.sync()
            await device.sync()
            status = device.status()
            assert (status.pending, status.sent, status.quarantined) == (0, 2, 1)
            [held] = device.quarantined()
            assert (held.seq, held.code) == (2, "too-large")
            assert "larger than the gateway accepts" in (held.reason or "")
            assert await keel.ledger.head(device.device_id) == 3
            async with keel.ledger.session("acme", device.device_id) as session:
                outcomes = await session.outcomes([1, 2, 3])
            assert [outcomes[s].outcome for s in (1, 2, 3)] == [Outcome.ACCEPTED, Outcome.ABANDONED, Outcome.ACCEPTED]
        finally:
            await device.close()


async def test_a_413_halves_the_batch_until_it_fits(tmp_path: Path) -> None:
    def refuse_big_batches(request: httpx.Request, response: httpx.Response | None) -> httpx.Response | None:
        if response is None and request.url.path == "/v1/push" and len(json.loads(request.content)["ops"]) > 3:
            body = {"error": "payload-too-large", "message": "too big", "detail": {"limit_bytes": 1}}
            return httpx.Response(413, json=body)
        return None

    async with fake_keel() as keel:
        device = await device_with(keel, tmp_path / "d.db", refuse_big_batches)
        try:
            for n in range(10):
                device.upsert("task", f"t-{n}", {"title": str(n)})
            await device.sync()
            while device.status().pending:
                await device.sync()
            stats = device.status().stats
            assert stats.batch_splits >= 2  # 10 → 5 → 2, then grows back one op at a time
            assert stats.duplicates_acknowledged == 0
            assert device.status().sent == 10
            assert await keel.project() == 10
        finally:
            await device.close()


async def test_a_429_waits_for_retry_after(tmp_path: Path) -> None:
    async with fake_keel(gateway_device_rate_per_s=4.0, gateway_device_burst=4) as keel:
        device = await keel.device(tmp_path / "d.db", config=replace(FAST, max_batch_ops=4))
        try:
            for n in range(8):
                device.upsert("task", f"t-{n}", {"title": str(n)})
            started = time.monotonic()
            await device.start()
            await device.wait_synced(10)
            elapsed = time.monotonic() - started
            stats = device.status().stats
            assert stats.backpressure_waits >= 1
            assert elapsed >= 0.9, "the second batch waited for the bucket to refill (4 ops at 4/s)"
            assert device.status().sent == 8
        finally:
            await device.close()


async def test_a_broker_outage_is_a_503_that_the_device_rides_out(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        device = await keel.device(tmp_path / "d.db")
        try:
            keel.log.available = False
            device.upsert("task", "t-1", {"title": "during the outage"})
            await device.start()
            for _ in range(50):
                if device.status().stats.transient_failures >= 2:
                    break
                await _tick()
            assert device.status().pending == 1, "nothing is marked sent without the broker's ack"
            assert await keel.ledger.head(device.device_id) == 0
            assert "503" in (device.status().last_error or "")
            keel.log.available = True
            await device.wait_synced(10)
            assert device.status().sent == 1
            assert await keel.project() == 1
        finally:
            await device.close()


async def test_a_token_the_gateway_no_longer_accepts_means_one_more_handshake(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        device = await keel.device(tmp_path / "d.db")
        try:
            device.upsert("task", "t-1", {"title": "a"})
            await device.sync()
            assert keel.gateway is not None
            fresh = TokenAuthority.generate()  # as after a restart with a generated key
            keel.gateway.tokens = fresh
            keel.gateway.sessions._tokens = fresh
            device.upsert("task", "t-2", {"title": "b"})
            await device.sync()
            assert device.status().stats.handshakes == 2
            assert device.status().sent == 2
        finally:
            await device.close()


async def test_a_rejected_op_is_quarantined_with_its_reason_and_later_ops_flow(tmp_path: Path) -> None:
    async with fake_keel(gateway_max_op_bytes=1_500) as keel:
        device = await keel.device(tmp_path / "d.db")
        try:
            device.upsert("task", "t-1", {"title": "ok"})
            device.upsert("task", "t-2", {"description": "y" * 2_000})
            device.upsert("task", "t-3", {"title": "ok too"})
            await device.sync()
            [held] = device.quarantined()
            assert (held.seq, held.code) == (2, "too-large")
            assert "exceeds the 1500-byte limit" in (held.reason or "")
            assert device.status().sent == 2
            assert await keel.project() == 2
        finally:
            await device.close()


async def test_a_page_that_does_not_match_its_manifest_is_pulled_again(tmp_path: Path) -> None:
    corrupted: list[int] = []

    def flip_a_value_once(request: httpx.Request, response: httpx.Response | None) -> httpx.Response | None:
        if response is None or request.url.path != "/v1/pull" or corrupted:
            return None
        page = response.json()
        if not page["entries"]:
            return None
        page["entries"][0]["event"]["payload"]["title"] = "flipped in transit"
        corrupted.append(1)
        return httpx.Response(200, json=page)

    async with fake_keel() as keel:
        writer = await keel.device(tmp_path / "w.db")
        reader = await device_with(keel, tmp_path / "r.db", flip_a_value_once)
        try:
            writer.upsert("task", "t-1", {"title": "original"})
            await writer.sync()
            await keel.project()
            await reader.sync()
            assert corrupted == [1]
            assert reader.status().stats.manifest_mismatches == 1
            assert reader.get("task", "t-1") == writer.get("task", "t-1")
        finally:
            await writer.close()
            await reader.close()


async def test_a_gateway_that_lost_its_head_gets_the_ops_again(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        device = await keel.device(tmp_path / "d.db")
        try:
            for n in range(3):
                device.upsert("task", f"t-{n}", {"title": str(n)})
            await device.sync()
            assert keel.gateway is not None
            lost = InMemoryPushLedger()
            keel.gateway.push._ledger = lost
            keel.gateway.sessions._ledger = lost
            device.upsert("task", "t-3", {"title": "3"})
            await device.sync()  # seq 4 meets head 0: a gap; seqs 1..3 go back to pending
            assert "expected seq 1" in (device.status().last_error or "")
            await device.sync()
            assert await lost.head(device.device_id) == 4
            assert device.status().pending == 0
            assert await keel.project() == 4, "the projector drops the re-sent copies by (device, seq)"
        finally:
            await device.close()


async def test_a_device_below_the_minimum_version_is_told_to_upgrade(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        assert keel.gateway is not None
        policy = default_catalog().policy("task")
        keel.gateway.sessions.policies = {"task": replace(policy, minimum_version=2)}
        device = await keel.device(tmp_path / "d.db", versions={"task": [1], "project": [1], "comment": [1]})
        try:
            with pytest.raises(UpgradeRequiredError, match=r"client speaks versions \[1\].*at least v2"):
                await device.sync()
            device.upsert("task", "t-1", {"title": "still works offline"})
            await device.start()
            for _ in range(50):
                if device.status().state is SyncState.UPGRADE_REQUIRED:
                    break
                await _tick()
            assert device.status().state is SyncState.UPGRADE_REQUIRED
            assert device.status().pending == 1
        finally:
            await device.close()


async def _tick() -> None:
    await asyncio.sleep(0.05)
