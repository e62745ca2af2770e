"""A device process for crash tests: reopens its store, syncs in the background and writes until killed.

    python -m tests.producers.device_worker STORE GATEWAY_URL [--drain]

With --drain it writes nothing, waits until everything is pushed and pulled, and exits 0.
"""

from __future__ import annotations

import asyncio
import sys
from itertools import count

from producers.device import Device, SyncConfig
from tests.producers.live import VERSIONS

CONFIG = SyncConfig(
    long_poll_s=1.0,
    idle_recheck_s=1.0,
    digest_interval_s=None,
    backoff_base_s=0.05,
    backoff_cap_s=0.3,
    max_batch_ops=5,
    request_timeout_s=5.0,
)


async def main(store: str, url: str, *, drain: bool) -> None:
    device = Device.open(store, url, versions=VERSIONS, config=CONFIG)
    try:
        await device.start()
        if drain:
            await device.wait_synced(60)
            return
        print("writing", flush=True)  # the test kills us at random points from here on
        for n in count():
            device.upsert("task", f"w-{n % 7}", {"title": f"write {n}", "priority": n % 4})
            if n % 11 == 0:
                device.delete("task", f"w-{(n + 3) % 7}")
            await asyncio.sleep(0.01)
    finally:
        await device.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], drain="--drain" in sys.argv))
