"""kill -9 while a device writes: every write the app saw return is there, with its op, and no seq repeats."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from producers.device.replica import Replica
from producers.device.sqlite_store_adapter import SqliteDeviceStore
from producers.device.store import OpStatus

ROOT = Path(__file__).resolve().parents[3]


def kill_while_writing(path: Path, after_s: float) -> int:
    """Run the writer, SIGKILL it, return the last seq it reported committed."""
    command = [sys.executable, "-m", "tests.producers.device.crash_writer", str(path)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        first = process.stdout.readline()  # the writer is up and writing
        time.sleep(after_s)
        process.send_signal(signal.SIGKILL)
        reported = [int(line) for line in [first, *process.stdout.read().split()]]
        assert process.wait(10) == -signal.SIGKILL
    return reported[-1] if reported else 0


def test_kill_9_mid_write_loses_no_acknowledged_write_and_never_reuses_a_seq(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    for after_s in (0.3, 0.05, 0.5):
        acknowledged = kill_while_writing(path, after_s)
        store = SqliteDeviceStore(path)
        try:
            replica = Replica(store, tenant_id="acme", device_id="crash-1", supported_versions={"task": [2]})
            with store.transaction() as tx:
                ops = tx.ops(OpStatus.PENDING)
                last = tx.last_logged_seq()
                states = {eid: tx.load_entity("task", eid) for eid in ("t-0", "t-1", "t-2")}
            assert last >= acknowledged > 0, "a write that returned to the app survived the crash"
            assert [op.seq for op in ops] == list(range(1, last + 1)), "seqs are contiguous and never reused"
            for entity_id, stored in states.items():
                newest = max((op for op in ops if op.event.entity_id == entity_id), key=lambda op: op.seq)
                assert stored is not None
                assert stored.state.has_applied(newest.event.event_id), "the newest op and its write are together"
            assert replica.upsert("task", "t-0", {"title": "after the crash"}).device_seq == last + 1
        finally:
            store.close()
