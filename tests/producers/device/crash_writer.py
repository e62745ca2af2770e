"""Writes to a device store as fast as it can, printing each committed seq, until killed (crash tests)."""

from __future__ import annotations

import sys
from itertools import count

from producers.device.replica import Replica
from producers.device.sqlite_store_adapter import SqliteDeviceStore


def main(path: str) -> None:
    replica = Replica(SqliteDeviceStore(path), tenant_id="acme", device_id="crash-1", supported_versions={"task": [2]})
    for n in count():
        if n % 5 == 4:
            event = replica.delete("task", f"t-{n % 3}")
        else:
            event = replica.upsert("task", f"t-{n % 3}", {"title": f"write {n}", "priority": n % 4})
        print(event.device_seq, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
