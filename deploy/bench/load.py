"""Load for the end-to-end and memory stages: devices pushing over HTTP, and a watch on what got projected.

`Fleet` drives enrolled device streams against a gateway: flat out (`push_for`, `push_count`) or at a fixed
rate (`push_at_rate`), recording when each op left. `ProjectionWatch` reads the projector's dedup table
(`applied_ops`, keyed by device and seq) to count projected ops and to see each op of the fleet arrive,
every few milliseconds, using the primary key: each poll asks only for seqs above what it already saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import asyncpg.pool

from deploy.bench.http_devices import HttpPusher, enroll
from deploy.bench.workload import DeviceStream, push_body
from projections.sql_migrations import quote_ident

__all__ = ["Fleet", "ProjectionWatch", "applied_count"]


@dataclass
class Fleet:
    """Device streams enrolled at a gateway, pushing prepared bodies; `sent` holds each op's send time."""

    url: str
    streams: list[DeviceStream]
    batch: int
    sent: dict[tuple[str, int], float] = field(default_factory=dict)  # (device, seq) → time.time() at send
    acknowledged: int = 0
    _pusher: HttpPusher | None = None

    async def start(self) -> None:
        """Enroll and handshake every device."""
        tokens = await enroll(self.url, self.streams)
        self._pusher = HttpPusher(self.url, tokens, connections=len(self.streams))

    async def close(self) -> None:
        """Close the HTTP pool."""
        if self._pusher is not None:
            await self._pusher.aclose()

    async def push(self, stream: DeviceStream, count: int, *, record: bool = False) -> None:
        """Push the stream's next `count` ops in one request (send times kept when `record`)."""
        assert self._pusher is not None, "start() first"
        events = stream.take(count)
        body = push_body(events)
        if record:
            now = time.time()
            for event in events:
                self.sent[(event.device_id, event.device_seq)] = now
        await self._pusher.push(stream.device_id, body, events[-1].device_seq)
        self.acknowledged += len(events)

    async def push_for(self, seconds: float, *, may_push: Callable[[], bool] | None = None) -> None:
        """Every device pushes batch after batch, all at once, for `seconds`; each waits while `may_push` says no."""
        deadline = time.monotonic() + seconds

        async def device(stream: DeviceStream) -> None:
            while time.monotonic() < deadline:
                while may_push is not None and not may_push() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)  # polling a predicate the caller owns
                await self.push(stream, self.batch)

        await asyncio.gather(*(device(stream) for stream in self.streams))

    async def push_count(self, total: int, on_tick: Callable[[], None] | None = None) -> None:
        """Push `total` ops spread over the devices, all devices at once, flat out."""
        per_device = [
            total // len(self.streams) + (1 if i < total % len(self.streams) else 0) for i in range(len(self.streams))
        ]

        async def device(stream: DeviceStream, owed: int) -> None:
            while owed > 0:
                size = min(self.batch, owed)
                await self.push(stream, size)
                owed -= size
                if on_tick is not None:
                    on_tick()

        await asyncio.gather(*(device(stream, owed) for stream, owed in zip(self.streams, per_device, strict=True)))

    async def push_at_rate(self, rate: float, seconds: float) -> None:
        """Ops at `rate`/s for `seconds`: every 10 ms the ops due go out, each device taking its turn."""
        tick = 0.01
        owed = 0.0
        turn = 0
        busy: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()

        failures: list[BaseException] = []

        async def send(stream: DeviceStream, count: int) -> None:
            try:
                await self.push(stream, count, record=True)
            except Exception as error:  # noqa: BLE001 - kept, and raised below once the others are done
                failures.append(error)
            finally:
                busy.discard(stream.device_id)

        began = time.monotonic()
        next_tick = began
        while time.monotonic() - began < seconds:
            owed += rate * tick
            for _ in range(len(self.streams)):
                if owed < 1:
                    break
                stream = self.streams[turn % len(self.streams)]
                turn += 1
                if stream.device_id in busy:
                    continue  # a device pushes one request at a time, like the SDK
                count = min(self.batch, int(owed))
                owed -= count
                busy.add(stream.device_id)
                task = asyncio.create_task(send(stream, count))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if failures:
                break  # the device's later seqs would only meet a gap
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)
        if failures:
            raise failures[0]


class ProjectionWatch:
    """Counts and observes the rows of `applied_ops` (one per projected op) of one schema."""

    def __init__(self, database_url: str, schema: str) -> None:
        self._database_url = database_url
        self._table = f"{quote_ident(schema)}.applied_ops"
        self._pool: asyncpg.Pool | None = None
        self.seen: dict[tuple[str, int], float] = {}  # (device, seq) → time.time() when first seen

    async def start(self) -> None:
        """Connect (two connections: counting and observing run side by side)."""
        self._pool = await asyncpg.create_pool(self._database_url, min_size=2, max_size=2)

    async def close(self) -> None:
        """Disconnect."""
        if self._pool is not None:
            await self._pool.close()

    async def count(self) -> int:
        """Projected ops so far (0 before the projector created its tables)."""
        assert self._pool is not None
        with contextlib.suppress(asyncpg.UndefinedTableError):
            return int(await self._pool.fetchval(f"SELECT count(*) FROM {self._table}"))  # noqa: S608
        return 0

    async def wait_for(self, total: int, *, timeout_s: float, on_sample: Callable[[], None] | None = None) -> float:
        """Seconds until `total` ops are projected (TimeoutError after `timeout_s`)."""
        began = time.monotonic()
        while await self.count() < total:
            if on_sample is not None:
                on_sample()
            if time.monotonic() - began > timeout_s:
                raise TimeoutError(f"{await self.count()} of {total} ops projected after {timeout_s:.0f}s")
            await asyncio.sleep(0.1)
        return time.monotonic() - began

    async def observe(
        self, devices: list[str], stop: asyncio.Event, *, floors: dict[str, int] | None = None, interval_s: float = 0.01
    ) -> None:
        """Until `stop`: note when each op of `devices` above its floor first shows up (polled every `interval_s`)."""
        assert self._pool is not None
        floor = {device: (floors or {}).get(device, 0) for device in devices}  # every seq up to it: seen
        query = (
            "SELECT a.device_id, a.device_seq FROM unnest($1::text[], $2::bigint[]) AS w(d, s) "  # noqa: S608
            f"JOIN {self._table} a ON a.device_id = w.d AND a.device_seq > w.s"
        )
        async with self._pool.acquire() as connection:
            await self._poll(connection, query, floor, stop, interval_s)

    async def _poll(
        self,
        connection: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        query: str,
        floor: dict[str, int],
        stop: asyncio.Event,
        interval_s: float,
    ) -> None:
        while True:
            rows = await connection.fetch(query, list(floor), list(floor.values()))
            now = time.time()
            for row in rows:
                self.seen.setdefault((row["device_id"], int(row["device_seq"])), now)
            for device, seq in list(floor.items()):
                while (device, seq + 1) in self.seen:
                    seq += 1  # noqa: PLW2901 - walking the floor up
                floor[device] = seq
            if stop.is_set():
                return
            await asyncio.sleep(interval_s)


async def applied_count(database_url: str, schema: str) -> int:
    """Rows of `schema`'s `applied_ops` (one per projected op) right now."""
    watch = ProjectionWatch(database_url, schema)
    await watch.start()
    try:
        return await watch.count()
    finally:
        await watch.close()
