"""Faults between devices and the gateway on the real services: a gateway SIGKILLed between the broker's
ack and its answer, a network that stalls, cuts, resets and slices (Toxiproxy), and a device killed -9
at random points. Every acknowledged op ends up in PostgreSQL exactly once and everyone converges."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keel.errors import ServiceUnavailableError
from producers.device import Device
from producers.gateway.service import GatewayServer
from tests.producers.live import (
    LIVE,
    VERSIONS,
    GatewayProcess,
    Toxiproxy,
    eventually,
    free_port,
    live_keel,
    sent_seqs,
    settle,
)
from tests.support.services import Services

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def signing_key(path: Path) -> Path:
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(key)
    return path


async def test_a_gateway_killed_between_the_brokers_ack_and_its_answer_duplicates_nothing(
    services: Services, tmp_path: Path
) -> None:
    async with live_keel(services, gateway=False) as keel:
        port, log = free_port(), tmp_path / "gateway.log"
        key = str(signing_key(tmp_path / "signing.pem"))
        dies_after_produce = GatewayProcess(
            keel.settings, port, log, KEEL_GATEWAY_FAILPOINTS="after-produce=kill", KEEL_GATEWAY_SIGNING_KEY_FILE=key
        )
        await dies_after_produce.start()
        keel.url = dies_after_produce.url
        device = await keel.device(tmp_path / "device.db")
        other = await keel.device(tmp_path / "other.db")
        for n in range(3):
            device.upsert("task", f"t-{n}", {"title": f"task {n}"})

        with pytest.raises(ServiceUnavailableError):
            await device.sync()
        assert await dies_after_produce.wait_exit() == -signal.SIGKILL
        assert device.status().pending == 3, "no answer, so nothing is marked sent"

        async def projected() -> bool:
            return await keel.applied_seqs(device.device_id) == [1, 2, 3]

        await eventually(projected, "the records the broker acknowledged to be projected")
        assert await keel.record_count("task") == 3

        # The next instance has no head for the device: it produces the ops again, commits, and dies
        # before answering.
        dies_after_commit = GatewayProcess(
            keel.settings, port, log, KEEL_GATEWAY_FAILPOINTS="after-commit=kill", KEEL_GATEWAY_SIGNING_KEY_FILE=key
        )
        await dies_after_commit.start()
        with pytest.raises(ServiceUnavailableError):
            await device.sync()
        assert await dies_after_commit.wait_exit() == -signal.SIGKILL
        assert device.status().pending == 3
        assert await keel.record_count("task") == 6, "the broker holds a second copy of each op"

        healthy = GatewayProcess(keel.settings, port, log, KEEL_GATEWAY_SIGNING_KEY_FILE=key)
        await healthy.start()
        try:
            await device.sync()
            assert device.status().pending == 0
            assert device.status().stats.duplicates_acknowledged == 3, "the retry is acknowledged from the ledger"
            assert await keel.record_count("task") == 6, "and produces nothing again"
            await other.sync()
            await keel.assert_exactly_once([device, other])
            await settle([device, other])
            assert other.rows("task") == device.rows("task")
            await keel.assert_converged([device, other])
        finally:
            await healthy.stop()


async def write_for(device: Device, prefix: str, seconds: float, rng: random.Random) -> None:
    """A user typing: upserts and the odd delete, spread over `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    n = 0
    while loop.time() < deadline:
        entity = f"{rng.choice(['shared', prefix])}-{rng.randrange(4)}"
        if rng.random() < 0.1:
            device.delete("task", entity)
        else:
            device.upsert("task", entity, {"title": f"{prefix} {n}", "priority": rng.randrange(4)})
        n += 1
        await asyncio.sleep(rng.uniform(0.02, 0.08))


TOXICS = [
    ("latency", "latency", {"latency": 300, "jitter": 200}, 1.0),
    ("slicer", "slicer", {"average_size": 48, "size_variation": 32, "delay": 500}, 1.0),
    ("reset", "reset_peer", {"timeout": 50}, 0.5),
    ("stall", "timeout", {"timeout": 400}, 0.5),
]


@pytest.mark.parametrize(
    "seconds_per_toxic", [pytest.param(1.5, id="bounded"), pytest.param(20.0, id="soak", marks=pytest.mark.long)]
)
async def test_devices_converge_through_a_network_that_stalls_resets_and_slices(
    services: Services, tmp_path: Path, seconds_per_toxic: float
) -> None:
    assert services.toxiproxy_url is not None
    async with live_keel(services) as keel:
        proxy = Toxiproxy(services.toxiproxy_url, keel.url.removeprefix("http://"))
        proxied = await proxy.create()
        try:
            alice = await keel.device(tmp_path / "alice.db", url=proxied)
            bob = await keel.device(tmp_path / "bob.db", url=proxied)
            await alice.start()
            await bob.start()
            rng = random.Random(5)
            for name, kind, attributes, toxicity in TOXICS:
                for stream in ("downstream", "upstream"):
                    await proxy.add(f"{name}-{stream}", kind, attributes, stream=stream, toxicity=toxicity)
                await asyncio.gather(
                    write_for(alice, "alice", seconds_per_toxic, rng), write_for(bob, "bob", seconds_per_toxic, rng)
                )
                for stream in ("downstream", "upstream"):
                    await proxy.remove(f"{name}-{stream}")
            await settle([alice, bob], timeout_s=90)
            failures = alice.status().stats.transient_failures + bob.status().stats.transient_failures
            assert failures > 0, "the toxics did hit the devices"
            await keel.assert_exactly_once([alice, bob])
            await keel.assert_converged([alice, bob])
        finally:
            await proxy.close()


async def test_a_device_killed_at_random_points_loses_nothing_and_applies_nothing_twice(
    services: Services, tmp_path: Path
) -> None:
    async with live_keel(services) as keel:
        store = tmp_path / "worker.db"
        worker = await keel.device(store)
        await worker.close()
        keel.devices.remove(worker)
        other = await keel.device(tmp_path / "other.db")
        await other.start()
        rng = random.Random(11)
        command = [sys.executable, "-m", "tests.producers.device_worker", str(store), keel.url]
        for _ in range(4):
            process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
            assert process.stdout is not None
            assert await asyncio.wait_for(process.stdout.readline(), 60) == b"writing\n"
            writes = asyncio.create_task(write_for(other, "other", 1.0, rng))
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            process.send_signal(signal.SIGKILL)
            await writes
            assert await process.wait() == -signal.SIGKILL
        drain = await asyncio.create_subprocess_exec(*command, "--drain", cwd=ROOT)
        assert await asyncio.wait_for(drain.wait(), 90) == 0
        reopened = Device.open(store, keel.url, versions=VERSIONS, config=LIVE)
        keel.devices.append(reopened)
        with reopened.replica.store.transaction() as tx:
            logged = tx.last_logged_seq()
        seqs = sent_seqs(reopened) + [op.seq for op in reopened.quarantined()]
        assert sorted(seqs) == list(range(1, logged + 1)), "every seq was used once, none lost or reused"
        assert logged > 20
        await reopened.start()
        await settle([reopened, other])
        await keel.assert_exactly_once([reopened, other])
        await keel.assert_converged([reopened, other])


async def test_postgresql_out_of_reach_is_a_503_and_loses_nothing(services: Services, tmp_path: Path) -> None:
    assert services.toxiproxy_url is not None
    database = urlsplit(services.database_url)
    proxy = Toxiproxy(services.toxiproxy_url, f"{database.hostname}:{database.port}")
    listen = (await proxy.create()).removeprefix("http://")
    proxied = urlunsplit(database._replace(netloc=f"{database.username}:{database.password}@{listen}"))
    try:
        async with live_keel(services, gateway=False) as keel:
            server = GatewayServer(keel.settings.model_copy(update={"database_url": proxied}))
            keel.url = await server.start()
            try:
                device = await keel.device(tmp_path / "device.db")
                device.upsert("task", "t-1", {"title": "before"})
                await device.sync()
                await proxy.set_enabled(False)
                device.upsert("task", "t-2", {"title": "during the outage"})
                with pytest.raises(ServiceUnavailableError, match="503"):
                    await device.sync()
                token = await _token(device)
                async with httpx.AsyncClient(base_url=keel.url, headers={"authorization": f"Bearer {token}"}) as http:
                    pull = await http.get("/v1/pull")
                    health = await http.get("/healthz")
                assert (pull.status_code, pull.json()["detail"]) == (503, {"service": "postgresql"})
                assert health.status_code == 200, "the gateway itself is alive"
                assert device.status().pending == 1
                await proxy.set_enabled(True)
                await device.sync()
                assert device.status().pending == 0
                await keel.assert_exactly_once([device])
            finally:
                await server.stop()
    finally:
        await proxy.close()


async def _token(device: Device) -> str:
    """A fresh token (the handshake goes to PostgreSQL, so take it from the device's last session)."""
    token = device.sync_loop._token
    assert token is not None
    return token
