"""`OutboxSignals` on PostgreSQL: LISTEN to the projector's outbox channel on a dedicated connection.

A pool connection cannot hold a LISTEN (the pool resets sessions on release), so the gateway keeps one
connection of its own. It reconnects with backoff whenever the connection is lost: the server closed it
(restart, `pg_terminate_backend`) or a probe every `probe_every_s` got no answer within `probe_timeout_s`
(a cut network shows no close). Notifications sent while disconnected are lost, so every reconnection is
reported (`on_connected`) and the watcher then reads every watched tenant's feed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from keel.backoff import Backoff
from keel.logging import get_logger
from projections.outbox import outbox_channel

__all__ = ["PgOutboxSignals"]

_log = get_logger("gateway.outbox_signals")
_LOST = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class PgOutboxSignals:
    """Notifications of `outbox_channel(schema)` from one LISTENing connection, reconnecting when it is lost."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        probe_every_s: float = 5.0,
        probe_timeout_s: float = 3.0,
        connect_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._dsn = dsn
        self.channel = outbox_channel(schema)
        self._probe_every_s = probe_every_s
        self._probe_timeout_s = probe_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff = backoff or Backoff(0.2, 5.0)
        self._on_grown: Callable[[str], None] = lambda _tenant: None
        self._on_connected: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self.connections = 0  # successful (re)connections, for tests and logs

    @property
    def is_listening(self) -> bool:
        """Whether the LISTEN connection is up."""
        connection = self._connection
        return connection is not None and not connection.is_closed()

    @property
    def server_pid(self) -> int | None:
        """The PostgreSQL backend process of the LISTEN connection (None while disconnected)."""
        connection = self._connection
        return connection.get_server_pid() if connection is not None and not connection.is_closed() else None

    async def start(self, on_grown: Callable[[str], None], on_connected: Callable[[], None]) -> None:
        """Listen in the background (idempotent); a database that is down only delays the first signal."""
        if self._task is None:
            self._on_grown, self._on_connected = on_grown, on_connected
            self._task = asyncio.create_task(self._run(), name="keel-outbox-signals")

    async def stop(self) -> None:
        """Stop listening and close the connection (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _deliver(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        if isinstance(payload, str) and payload:
            self._on_grown(payload)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_until_lost()
            except _LOST as error:
                _log.warning("outbox notifications lost; polling until they are back", error=repr(error))
            await asyncio.sleep(self._backoff.next_delay())

    async def _listen_until_lost(self) -> None:
        connection = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout_s,
            server_settings={"application_name": "keel-gateway-signals"},
        )
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        try:
            await connection.add_listener(self.channel, self._deliver)
            self._connection = connection
            self.connections += 1
            self._backoff.reset()
            _log.info("listening for outbox notifications", channel=self.channel, connections=self.connections)
            self._on_connected()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._probe_every_s):
                        await lost.wait()
                if not lost.is_set():
                    await self._probe(connection)
            raise ConnectionResetError("the server closed the LISTEN connection")
        finally:
            self._connection = None
            # Not `close()`: it waits for the server, which may be unreachable; the socket simply goes.
            connection.terminate()

    async def _probe(self, connection: asyncpg.Connection) -> None:
        """Raise TimeoutError when the server does not answer a trivial query in time."""
        # Not cancelled on timeout: cancelling asyncpg mid-query waits for the server's answer to the cancel
        # request. The caller terminates the connection instead, which fails the query at once.
        probe = asyncio.ensure_future(connection.fetchval("SELECT 1"))
        probe.add_done_callback(_retrieve)
        done, _ = await asyncio.wait({probe}, timeout=self._probe_timeout_s)
        if not done:
            raise TimeoutError(f"no answer to a probe within {self._probe_timeout_s}s")
        probe.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a probe's outcome as seen (a probe abandoned at a timeout fails once its connection goes)."""
    if not task.cancelled():
        task.exception()
