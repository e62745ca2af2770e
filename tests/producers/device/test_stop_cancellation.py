"""Stopping the sync loop always ends it, even when a wake-up fires in the same loop iteration as the stop.

On Python 3.11 `asyncio.wait_for(event.wait(), t)` returns the wait's result when the event is set in the
same iteration as a cancellation, and the cancellation is lost (CPython gh-86296): the worker loops on and
`SyncLoop.stop()` waits for it forever. These tests set the wake-up and stop in one iteration, many times.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

import httpx

from producers.device import Device, SyncState
from tests.producers.support import FAST, GATEWAY_URL, FakeKeel, fake_keel

TRIES = 200
STOP_BOUND_S = 5.0  # generous for a loaded CI machine; a lost cancellation hangs forever


class _WatchedEvent(asyncio.Event):
    """An event that says when a worker waits on it (so a test can fire it at an idle worker)."""

    def __init__(self) -> None:
        super().__init__()
        self.awaited = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.awaited.set()
        try:
            return await super().wait()
        finally:
            self.awaited.clear()


def _watch(device: Device) -> tuple[_WatchedEvent, _WatchedEvent]:
    """Swap the loop's wake-up events (push nudge, stream poke) for watched ones."""
    loop = device.sync_loop
    loop._push_nudge = nudge = _WatchedEvent()
    loop._poke = poke = _WatchedEvent()
    return nudge, poke


async def _parked(event: _WatchedEvent) -> None:
    """Wait until a worker idles on `event`."""
    async with asyncio.timeout(STOP_BOUND_S):
        await event.awaited.wait()


async def _bounded(what: str, stop: asyncio.Future[None] | asyncio.Task[None]) -> None:
    try:
        async with asyncio.timeout(STOP_BOUND_S):
            await stop
    except TimeoutError:
        raise AssertionError(f"{what} did not finish within {STOP_BOUND_S}s: a worker lost its cancellation") from None


async def test_a_write_just_before_going_offline_never_keeps_the_loop_running(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        device = await keel.device(tmp_path / "d.db")
        nudge, _ = _watch(device)
        try:
            for n in range(TRIES):
                await device.go_online()
                await _parked(nudge)
                device.upsert("task", f"t-{n}", {"title": str(n)})  # nudges the push worker...
                await _bounded("go_offline", asyncio.ensure_future(device.go_offline()))  # ...in this iteration
                assert not device.sync_loop.is_running
                assert device.status().state is SyncState.OFFLINE
            await device.go_online()
            await device.wait_synced(10)
            assert device.status().sent == TRIES, "every write made just before a stop went out afterwards"
        finally:
            await _bounded("close", asyncio.ensure_future(device.close()))


class _OpenStream(httpx.AsyncByteStream):
    """A server-sent event stream that says hello and then stays open until closed."""

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"event: hello\ndata: {}\n\n"
        await self._closed.wait()

    async def aclose(self) -> None:
        self._closed.set()


class _WithLiveStream(httpx.AsyncBaseTransport):
    """The fake gateway, plus a live `/v1/stream` (the in-process ASGI transport buffers whole bodies)."""

    def __init__(self, keel: FakeKeel) -> None:
        self._inner = keel.transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/stream":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_OpenStream())
        return await self._inner.handle_async_request(request)


async def test_a_poke_in_the_iteration_of_a_stop_never_keeps_the_pull_worker_running(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        first = await keel.device(tmp_path / "d.db")
        await first.close()
        device = Device.open(
            tmp_path / "d.db",
            GATEWAY_URL,
            versions={"task": [1, 2]},
            config=replace(FAST, use_stream=True, idle_recheck_s=5.0, long_poll_s=0.01),
            transport=_WithLiveStream(keel),
        )
        loop = device.sync_loop
        _, poke = _watch(device)
        try:
            for _ in range(TRIES):
                await device.go_online()
                await _parked(poke)  # with the stream connected, the pull worker idles until a poke
                poke.set()  # what the stream worker does on a `poke` event
                await _bounded("go_offline", asyncio.ensure_future(device.go_offline()))
                assert not loop.is_running
        finally:
            await _bounded("close", asyncio.ensure_future(device.close()))


async def test_close_right_after_start_and_a_write_finishes_within_a_bound(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        enrolled = await keel.device(tmp_path / "d.db")
        await enrolled.close()
        for n in range(TRIES):
            device = Device.open(
                tmp_path / "d.db", GATEWAY_URL, versions={"task": [1, 2]}, config=FAST, transport=keel.transport
            )
            await device.start()
            for _ in range(n % 4):  # stop at different points of the workers' first steps
                await asyncio.sleep(0)
            device.upsert("task", f"t-{n}", {"title": str(n)})
            await _bounded("close", asyncio.ensure_future(device.close()))
            assert not device.sync_loop.is_running
        last = Device.open(
            tmp_path / "d.db", GATEWAY_URL, versions={"task": [1, 2]}, config=FAST, transport=keel.transport
        )
        try:
            await last.sync()
            assert last.status().pending == 0
            assert last.status().sent == TRIES, "writes made before a close are kept and sent later"
        finally:
            await last.close()
