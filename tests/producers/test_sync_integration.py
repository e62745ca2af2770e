"""Devices, the gateway and the projector on the real Kafka, registry and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from keel.errors import UpgradeRequiredError
from producers.device import SyncState
from producers.wire import HandshakeRequest, WireEvent
from schemas.catalog import default_catalog
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.producers.live import eventually, live_keel, settle
from tests.support.services import Services

if TYPE_CHECKING:
    from collections.abc import Callable

    from producers.device import Device


async def _pull_until(device: Device, arrived: Callable[[], bool], what: str) -> None:
    async def pulled() -> bool:
        await device.sync()
        return arrived()

    await eventually(pulled, what, 30)


pytestmark = pytest.mark.integration


async def test_a_change_written_offline_reaches_the_other_device_and_postgresql(
    services: Services, tmp_path: Path
) -> None:
    async with live_keel(services) as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db")
        await bob.start()
        for n in range(5):  # alice is offline: nothing leaves the device yet
            alice.upsert("task", f"t-{n}", {"title": f"task {n}", "priority": n % 4})
        alice.delete("task", "t-4")
        assert alice.status().pending == 6
        await alice.start()

        async def bob_has_everything() -> bool:
            return bob.rows("task") == alice.rows("task")

        await eventually(bob_has_everything, "bob to receive alice's offline changes")
        assert [entity_id for entity_id, _ in bob.rows("task")] == ["t-0", "t-1", "t-2", "t-3"]
        await settle([alice, bob])
        await keel.assert_exactly_once([alice, bob])
        await keel.assert_converged([alice, bob])
        rows = await keel.fetch("SELECT entity_id, title, deleted FROM {schema}.task ORDER BY entity_id")
        assert [(r["entity_id"], r["title"], r["deleted"]) for r in rows] == [
            ("t-0", "task 0", False),
            ("t-1", "task 1", False),
            ("t-2", "task 2", False),
            ("t-3", "task 3", False),
            ("t-4", None, True),
        ]
        registry = ConfluentSchemaRegistry(services.registry_url)
        try:
            subject = f"{keel.settings.topic_for('task')}-value"
            assert await registry.versions(subject) == [1, 2, 3], "the gateway registered every version at start"
        finally:
            await registry.close()
        clock = alice.clock()
        assert clock.offset_ms is not None
        assert abs(clock.offset_ms) < 5_000, "same machine: the measured offset is small"


async def test_concurrent_conflicting_edits_converge_everywhere(services: Services, tmp_path: Path) -> None:
    async with live_keel(services) as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db")
        alice.upsert("task", "shared", {"title": "first draft", "priority": 1})
        await alice.sync()
        await keel.wait_projected(alice)
        await bob.sync()
        assert bob.get("task", "shared") == alice.get("task", "shared")
        # Both edit offline, without seeing each other: the same field differently, and different fields.
        alice.upsert("task", "shared", {"title": "alice's title", "description": "alice's notes"})
        bob.upsert("task", "shared", {"title": "bob's title", "priority": 3})
        bob.upsert("task", "gone", {"title": "to be deleted"})
        await bob.sync()
        alice.delete("task", "gone")  # alice never saw it: a delete of an entity she does not know
        await alice.start()
        await bob.start()
        await settle([alice, bob])
        await keel.assert_exactly_once([alice, bob])
        await keel.assert_converged([alice, bob])
        merged = alice.get("task", "shared")
        assert merged is not None
        assert merged["description"] == "alice's notes"
        assert merged["priority"] == 3
        assert merged["title"] in ("alice's title", "bob's title")
        rows = await keel.fetch("SELECT title, priority, description FROM {schema}.task WHERE entity_id = 'shared'")
        assert (rows[0]["title"], rows[0]["priority"], rows[0]["description"]) == (
            merged["title"],
            merged["priority"],
            merged["description"],
        )
        decisions = await keel.fetch(
            "SELECT field, winner_device_id FROM {schema}.conflict_decisions WHERE entity_id = 'shared'"
        )
        assert [d["field"] for d in decisions] == ["title"], "only the field both wrote is a conflict"
        loser = alice if decisions[0]["winner_device_id"] == bob.device_id else bob
        notices = [n.notice for n in loser.sync_loop.notices if n.kind == "conflict"]
        assert notices, "the device whose edit lost hears about it"
        assert notices[0] is not None
        assert notices[0]["entity_id"] == "shared"


async def test_an_older_device_receives_down_cast_changes_with_cautions(services: Services, tmp_path: Path) -> None:
    async with live_keel(services) as keel:
        modern = await keel.device(tmp_path / "modern.db")
        legacy = await keel.device(tmp_path / "legacy.db", versions={"task": [1], "project": [1], "comment": [1]})
        await legacy.sync()
        assert legacy.replica.negotiated_versions["task"] == 1
        modern.upsert(
            "task",
            "t-1",
            {"title": "ship it", "description": "v2 calls it description", "status": "DOING", "priority": 3},
        )
        legacy.upsert("task", "t-2", {"title": "from v1", "notes": "v1 calls it notes"})
        await modern.start()
        await legacy.start()
        await settle([modern, legacy])
        seen = legacy.get("task", "t-1")
        assert seen == {
            "title": "ship it",
            "notes": "v2 calls it description",
            "due": None,
            "status": "TODO",
            "project_id": None,
        }
        cautions = [c for _, found in legacy.sync_loop.cautions for c in found]
        assert "status: DOING is not in v1, shown as TODO" in cautions
        assert "priority: not in v1, value not shown" in cautions
        modern_view = modern.get("task", "t-2")
        assert modern_view is not None
        assert modern_view["description"] == "v1 calls it notes"
        await keel.assert_exactly_once([modern, legacy])
        assert (await legacy.check_digests())["task"], "the server's rows down-cast to v1 equal the legacy device's"
        assert (await modern.check_digests())["task"]


async def test_a_device_below_the_minimum_version_hears_upgrade_required(services: Services, tmp_path: Path) -> None:
    async with live_keel(services) as keel:
        device = await keel.device(tmp_path / "old.db", versions={"task": [1], "project": [1], "comment": [1]})
        keel.gateway.sessions.policies = {"task": replace(default_catalog().policy("task"), minimum_version=2)}
        async with httpx.AsyncClient(base_url=keel.url) as client:
            secret = device.replica.get_meta("identity.device_secret") or ""
            request = HandshakeRequest(
                tenant_id="acme",
                device_id=device.device_id,
                device_secret=secret,
                versions={"task": [1], "project": [1], "comment": [1]},
            )
            response = await client.post("/v1/handshake", content=request.model_dump_json())
        assert response.status_code == 426
        body = response.json()
        assert body["error"] == "upgrade-required"
        assert body["detail"] == {"entity": "task", "client_versions": [1], "minimum": 2, "newest": 3}
        assert "client speaks versions [1], server requires at least v2" in body["message"]
        with pytest.raises(UpgradeRequiredError):
            await device.sync()
        await device.start()

        async def told() -> bool:
            return device.status().state is SyncState.UPGRADE_REQUIRED

        await eventually(told, "the sync loop to stop with upgrade-required", 10)


async def test_a_device_cannot_touch_another_devices_outbox_or_identity(services: Services, tmp_path: Path) -> None:
    async with live_keel(services) as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db")
        token = await alice.sync_loop.handshake()
        bob_op = bob.upsert("task", "t-1", {"title": "bob's"})

        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=keel.url, headers=headers) as client:
            pull = await client.get("/v1/pull", params={"cursor": "", "device_id": bob.device_id})
            stream = await client.get("/v1/stream", params={"device_id": bob.device_id})
            digest = await client.get("/v1/digest", params={"tenant_id": "other-tenant"})
            push = await client.post("/v1/push", json={"ops": [WireEvent.of(bob_op).model_dump(mode="json")]})
            anonymous = await client.get("/v1/pull", headers={"authorization": ""})
            own = await client.get("/v1/pull", params={"cursor": "", "device_id": alice.device_id})
        assert [pull.status_code, stream.status_code, digest.status_code, push.status_code] == [403, 403, 403, 403]
        assert push.json()["error"] == "forbidden"
        assert anonymous.status_code == 401
        assert own.status_code == 200
        assert await keel.applied_seqs(bob.device_id) == []


async def test_a_silently_diverged_device_is_repaired_from_the_servers_state(
    services: Services, tmp_path: Path
) -> None:
    async with live_keel(services) as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db", versions={"task": [1], "project": [1], "comment": [1]})
        alice.upsert("task", "t-1", {"title": "the truth", "status": "DONE", "priority": 2})
        alice.upsert("task", "t-2", {"title": "deleted later"})
        alice.delete("task", "t-2")
        await alice.sync()
        await keel.wait_projected(alice)
        # The outbox hands out a commit once every older transaction of the cluster has ended (its xid8
        # horizon), so a pull right after the projection may come a moment early: pull until it is there.
        await _pull_until(bob, lambda: bob.get("task", "t-1") is not None, "bob to receive t-1")
        with bob.replica.store.transaction() as tx:
            stored = tx.load_entity("task", "t-1")
            assert stored is not None
            tx.save_entity(replace(stored, visible={**(stored.visible or {}), "status": "TODO"}))
        assert (await bob.check_digests())["task"] is False
        assert bob.status().stats.entities_repaired == 1
        assert (await bob.check_digests())["task"] is True
        repaired = bob.get("task", "t-1")
        assert repaired is not None
        assert (repaired["title"], repaired["status"]) == ("the truth", "DONE")
        state = bob.replica.state("task", "t-1")
        assert state is not None
        assert set(state.fields) == {"title", "status"}, "written fields, with their stamps; priority has no v1 form"
        bob.upsert("task", "t-1", {"title": "edited after the repair"})
        await bob.sync()
        await keel.wait_projected(bob)
        await _pull_until(
            alice, lambda: (alice.get("task", "t-1") or {}).get("title") == "edited after the repair", "bob's edit"
        )
        current = alice.get("task", "t-1")
        assert current is not None
        assert (current["title"], current["priority"]) == ("edited after the repair", 2)
