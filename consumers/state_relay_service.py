"""The state relay as a service (`keel run state-relay`): wiring, health endpoint, clean stop.

Start-up order, each dependency waited for with backoff: PostgreSQL (pool, the projector's SQL migrations —
the relay needs `relay_cursors`), the compacted state topics, the registry client, the idempotent acks=all
producer; then the relay loop (consumers/state_relay.py) and `/health`, `/ready`, `/metrics` on
`KEEL_STATE_RELAY_HEALTH_PORT`. SIGTERM or SIGINT stops after the page in flight; a second signal cancels.
Run one replica: a second would not break anything, only send every record twice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial

from consumers.health import HealthReport, HealthServer
from consumers.startup import open_backbone
from consumers.state_relay import StateEncoder, StateRelay
from keel.logging import get_logger
from keel.settings import Settings
from projections.pg_store_adapter import PgProjectionStore
from projections.state_feed_pg_adapter import PgStateFeed
from projections.topics import state_topic, state_topic_specs
from schemas.catalog import Catalog, default_catalog

__all__ = ["StateRelayService", "run_state_relay", "serve_state_relay"]

_log = get_logger("state_relay")
STOP_TIMEOUT_S = 30.0


class StateRelayService:
    """One relay process: its dependencies, the relay and the health endpoint."""

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: Catalog | None = None,
        health_port: int | None = None,
        after_produce: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog or default_catalog()
        self.health = HealthServer(
            self.report,
            host=settings.projector_health_host,  # the same interface rule as the projector's (0.0.0.0 in pods)
            port=settings.state_relay_health_port if health_port is None else health_port,
        )
        self.relay: StateRelay | None = None
        self.ready_event = asyncio.Event()
        self.started_at = time.monotonic()
        self._after_produce = after_produce

    def report(self) -> HealthReport:
        """Alive while running; ready once the relay runs without waiting on a dependency."""
        relay = self.relay
        if relay is None:
            return HealthReport(alive=True, ready=False, details={"state": "starting"})
        stats = relay.stats
        details = {
            "state": "running",
            "cursor": relay.cursor.encode() if relay.cursor else None,
            "waiting_on": relay.waiting_on,
            "pages": stats.pages,
            "published": stats.published,
            "snapshots": stats.snapshots,
            "resyncs": stats.resyncs,
            "transient_failures": stats.transient_failures,
            "last_publish_ms": stats.last_publish_ms,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
        }
        return HealthReport(alive=True, ready=relay.waiting_on is None, details=details)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set."""
        settings = self.settings
        async with AsyncExitStack() as stack:
            await self.health.start()
            stack.push_async_callback(self.health.stop)

            topics = state_topic_specs(settings, self.catalog)
            backbone = await open_backbone(
                stack, settings, stop, topics=topics, pool_size=2, application_name="keel-state-relay"
            )
            if backbone is None:
                return
            pool, registry, writer = backbone.pool, backbone.registry, backbone.writer
            self.relay = StateRelay(
                PgStateFeed(pool, settings.pg_schema),
                PgProjectionStore(pool, settings.pg_schema),
                writer,
                StateEncoder(registry, partial(state_topic, settings), catalog=self.catalog),
                catalog=self.catalog,
                page_size=settings.state_relay_page_size,
                after_produce=self._after_produce,
            )
            self.ready_event.set()
            _log.info("state relay running", schema=settings.pg_schema, topics=[t.name for t in topics])
            await self.relay.run(stop, poll_s=settings.state_relay_poll_s)
        _log.info("state relay stopped")


async def serve_state_relay(settings: Settings) -> None:
    """Run the relay until SIGTERM/SIGINT; a second signal cancels the page in flight."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(StateRelayService(settings).run(stop), name="state-relay")

    def on_signal(name: str) -> None:
        if stop.is_set():
            task.cancel()
            return
        _log.info("signal received: stopping", signal=name)
        stop.set()
        loop.call_later(STOP_TIMEOUT_S, task.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await task
    except asyncio.CancelledError:
        _log.warning("state relay cancelled before it stopped cleanly")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_state_relay(settings: Settings) -> None:
    """Console entry: serve the relay in a fresh event loop."""
    asyncio.run(serve_state_relay(settings))
