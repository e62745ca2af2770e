"""The SDK signs and chains every op it logs; the gateway and the projector accept the chain, and a store
restored from an old backup chains its next op after the gateway's head."""

from __future__ import annotations

import shutil
from pathlib import Path

from producers.device import Device
from producers.device.store import OpStatus
from schemas.op_chain import public_key_from_bytes, raise_if_forged
from tests.producers.support import FAST, GATEWAY_URL, fake_keel


async def test_ops_are_signed_chained_and_their_chain_reaches_the_projection(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        device = await keel.device(tmp_path / "d.db")
        try:
            for n in range(3):
                device.upsert("task", f"t-{n}", {"title": f"task {n}"})
            await device.sync()
            assert await keel.project() == 3
            with device.replica.store.transaction() as tx:
                ops = [op.event for op in tx.ops(OpStatus.SENT)]
            assert keel.gateway is not None
            [key] = await keel.gateway.device_keys.keys_of(device.device_id)
            for previous, op in zip([None, *ops], ops, strict=False):
                raise_if_forged(op, public_key_from_bytes(key.public_key))
                assert op.prev_hash == (previous.hash if previous else None)
            head = keel.store.chains.heads[device.device_id]
            assert (head.head_seq, head.head_hash) == (3, ops[-1].hash)
        finally:
            await device.close()


async def test_a_store_restored_from_an_old_backup_chains_after_the_gateways_head(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        path, backup = tmp_path / "d.db", tmp_path / "backup.db"
        device = await keel.device(path)
        device.upsert("task", "t-1", {"title": "one"})
        await device.sync()
        await device.close()
        shutil.copy(path, backup)  # taken after seq 1 (the store is closed: its WAL is checkpointed)
        device = Device.open(path, GATEWAY_URL, versions={"task": [1, 2]}, config=FAST, transport=keel.transport)
        device.upsert("task", "t-2", {"title": "two"})
        await device.sync()
        await device.close()
        restored = Device.open(backup, GATEWAY_URL, versions={"task": [1, 2]}, config=FAST, transport=keel.transport)
        try:
            await restored.sync()  # the handshake raises the seq floor and hands over the chain head
            restored.upsert("task", "t-3", {"title": "three"})
            await restored.sync()
            assert restored.quarantined() == []
            assert await keel.project() == 3
            assert keel.store.chains.heads[restored.device_id].head_seq == 3
        finally:
            await restored.close()
