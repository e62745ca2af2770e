"""Two devices, the gateway and a projector step on in-memory fakes: the whole loop without services."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from producers.device import SyncState
from projections.outbox import OutboxEntry, OutboxKind
from tests.producers.support import fake_keel


async def test_a_change_written_offline_reaches_another_device(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db")
        try:
            alice.upsert("task", "t-1", {"title": "write the report", "priority": 2})
            assert alice.status().pending == 1
            await alice.sync()
            assert alice.status().pending == 0
            assert await keel.project() == 1
            await bob.sync()
            assert bob.get("task", "t-1") == alice.get("task", "t-1")
            assert bob.digest("task") == alice.digest("task")
        finally:
            await alice.close()
            await bob.close()


async def test_the_digest_exchange_finds_and_repairs_a_silently_diverged_row(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db")
        try:
            alice.upsert("task", "t-1", {"title": "the truth", "priority": 1})
            alice.upsert("task", "t-2", {"title": "also true"})
            await alice.sync()
            await keel.project()
            await bob.sync()
            assert await bob.check_digests() == {"task": True, "project": True, "comment": True}
            with bob.replica.store.transaction() as tx:  # a bit flips on disk, a bug, a bad restore …
                stored = tx.load_entity("task", "t-1")
                assert stored is not None
                tx.save_entity(replace(stored, visible={**(stored.visible or {}), "title": "bit rot"}))
                gone = tx.load_entity("task", "t-2")
                assert gone is not None
                tx.save_entity(replace(gone, visible=None))
            assert bob.digest("task") != alice.digest("task")
            assert (await bob.check_digests())["task"] is False
            assert bob.status().stats.entities_repaired == 2
            assert bob.rows("task") == alice.rows("task")
            assert (await bob.check_digests())["task"] is True
        finally:
            await alice.close()
            await bob.close()


async def test_a_device_behind_the_pruned_outbox_resyncs_from_snapshots(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db")
        try:
            await bob.sync()
            stale_cursor = bob.status().cursor
            for n in range(3):
                alice.upsert("task", f"t-{n}", {"title": str(n)})
            alice.delete("task", "t-2")
            await alice.sync()
            await keel.project()
            assert await keel.store.outbox.prune("acme", retention_s=-1) > 0  # bob was away too long
            await bob.sync()
            assert bob.status().stats.resyncs == 1
            assert bob.rows("task") == alice.rows("task")
            assert bob.status().cursor != stale_cursor
            assert (await bob.check_digests())["task"] is True
        finally:
            await alice.close()
            await bob.close()


async def test_every_op_of_a_busy_pair_lands_once_and_both_converge(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db")
        try:
            for round_ in range(5):
                for n in range(6):
                    alice.upsert("task", f"t-{n}", {"title": f"alice {round_}.{n}", "priority": n % 4})
                    bob.upsert("task", f"t-{(n + 2) % 6}", {"description": f"bob {round_}.{n}"})
                bob.delete("task", f"t-{round_}")
                await alice.sync()
                await bob.sync()
                await keel.project()
            await alice.sync()
            await bob.sync()
            assert alice.rows("task") == bob.rows("task")
            assert len(keel.store.applied) == alice.status().sent + bob.status().sent == 65
            assert alice.status().pending == bob.status().pending == 0
            assert all((await alice.check_digests()).values())
            assert all((await bob.check_digests()).values())
            assert alice.quarantined() == bob.quarantined() == []
        finally:
            await alice.close()
            await bob.close()


async def test_a_resync_notice_makes_the_device_compare_and_repair(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        alice = await keel.device(tmp_path / "alice.db")
        try:
            alice.upsert("task", "t-1", {"title": "kept"})
            await alice.sync()
            await keel.project()
            await alice.sync()
            with alice.replica.store.transaction() as tx:
                stored = tx.load_entity("task", "t-1")
                assert stored is not None
                tx.save_entity(replace(stored, visible={**(stored.visible or {}), "title": "stale"}))
            notice = OutboxEntry("acme", alice.device_id, OutboxKind.RESYNC, None, None, None, {"reason": "rebuild"})
            keel.store.outbox.append([notice])
            await alice.sync()
            assert alice.status().stats.resyncs == 1
            assert [n.kind for n in alice.sync_loop.notices] == ["resync"]
            current = alice.get("task", "t-1")
            assert current is not None
            assert current["title"] == "kept"
        finally:
            await alice.close()


async def test_a_device_switched_offline_keeps_writing_and_catches_up_when_back(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        alice = await keel.device(tmp_path / "alice.db")
        bob = await keel.device(tmp_path / "bob.db")
        try:
            await alice.start()
            await bob.start()
            await alice.go_offline()
            assert alice.status().state is SyncState.OFFLINE
            alice.upsert("task", "t-1", {"title": "written on a plane"})
            await asyncio.sleep(0.3)
            assert alice.status().pending == 1
            assert await keel.project() == 0
            await alice.go_online()
            await alice.wait_synced(10)
            assert await keel.project() == 1
            await bob.wait_synced(10)
            assert bob.get("task", "t-1") == alice.get("task", "t-1")
            assert alice.status().state is SyncState.ONLINE
        finally:
            await alice.close()
            await bob.close()
