"""`keel run dashboard`: one live page on lag, throughput, retries, dead letters, conflict hotspots and versions.

Every `dashboard_refresh_s` the dashboard reads PostgreSQL (projector and gateway tables) and Kafka (end and
committed offsets, the DLQ) — read-only — and, when `gateway_url`/`projector_url` are set, the retry counters
on those services' `/metrics`. The page (`dashboard.html`: inline JS and SVG, nothing from a CDN) polls
`/api/snapshot`. `/metrics` exports the fleet view as gauges (group lag, DLQ size, devices per schema
version, backlog of the ten devices furthest behind), which the alert rules in `prometheus/` watch: they keep
working when the projector itself is down. `/healthz` answers while the dashboard serves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from importlib import resources
from types import FrameType

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from deploy.observability.fleet import HistoryPoint, KafkaView, PgView, Snapshot
from deploy.observability.kafka_probe_adapter import KafkaProbe
from deploy.observability.pg_probe_adapter import PgProbe
from deploy.observability.services_probe import scrape_samples
from keel.errors import KeelError, ServiceUnavailableError
from keel.logging import get_logger
from keel.settings import Settings
from keel.telemetry import PROMETHEUS_CONTENT_TYPE, configure_telemetry, observe, prometheus_text
from schemas.catalog import Catalog, default_catalog

__all__ = ["Dashboard", "DashboardServer", "build_dashboard_app", "serve_dashboard"]

_log = get_logger("dashboard")
HISTORY_POINTS = 150  # five minutes at the default two-second refresh
_RETRY_METRICS = (
    "keel_gateway_requests_total",
    "keel_gateway_push_ops_total",
    "keel_projector_retries_total",
    "keel_projector_duplicates_total",
)
Observations = list[tuple[float, dict[str, str]]]


class Dashboard:
    """Keeps the latest `Snapshot` fresh and exports it as gauges."""

    def __init__(self, settings: Settings, *, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or default_catalog()
        self.snapshot: Snapshot | None = None
        self.history: collections.deque[HistoryPoint] = collections.deque(maxlen=HISTORY_POINTS)
        self._pg: PgProbe | None = None
        self._kafka: KafkaProbe | None = None
        self._http = httpx.AsyncClient(timeout=3.0)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._register_gauges()

    # ------------------------------------------------------------ reading

    @property
    def topics(self) -> list[str]:
        """The change topics of the catalog's entity types."""
        return [self.settings.topic_for(entity) for entity in self.catalog.entities()]

    async def _pg_view(self) -> PgView:
        if self._pg is None:
            try:
                self._pg = await PgProbe.connect(self.settings.database_url, self.settings.pg_schema)
            except KeelError as error:
                return PgView(error=str(error))
        stable = {entity: self.catalog.policy(entity).stable_version for entity in self.catalog.entities()}
        return await self._pg.view(self.settings.consumer_group, stable)

    async def _kafka_view(self, pg: PgView) -> KafkaView:
        try:
            if self._kafka is None:
                probe = KafkaProbe(self.settings, timeout_s=max(2.0, self.settings.dashboard_refresh_s * 2))
                await probe.start()
                self._kafka = probe
            return await self._kafka.view(
                self.topics, self.settings.consumer_group, pg.stored_offsets, self.settings.doctor_dlq_window_s
            )
        except ServiceUnavailableError as error:
            if self._kafka is not None:
                await self._kafka.close()
                self._kafka = None  # reconnect on the next refresh
            return KafkaView(error=str(error))

    async def _retries(self) -> dict[str, float]:
        """Retry counters from the services' /metrics (empty when no service URL is configured)."""
        totals: dict[str, float] = {}
        for base in {url.rstrip("/") for url in (self.settings.gateway_url, self.settings.projector_url) if url}:
            for name, labels, value in await scrape_samples(self._http, f"{base}/metrics", _RETRY_METRICS):
                key = _retry_key(name, labels)
                if key is not None:
                    totals[key] = totals.get(key, 0.0) + value
        return totals

    async def refresh(self) -> Snapshot:
        """Read everything once; the new snapshot (kept for the page and the gauges)."""
        async with self._lock:
            pg = await self._pg_view()
            kafka = await self._kafka_view(pg)
            now_ms = time.time_ns() // 1_000_000
            letters = kafka.dead_letters.records if kafka.dead_letters else 0
            if kafka.error is None:
                self.history.append(
                    HistoryPoint(now_ms, kafka.total_lag, kafka.end_total, kafka.position_total, letters)
                )
            self.snapshot = Snapshot(
                now_ms,
                self.settings.topic_prefix,
                self.settings.pg_schema,
                self.settings.consumer_group,
                kafka,
                pg,
                list(self.history),
                await self._retries(),
            )
            return self.snapshot

    async def current(self) -> Snapshot:
        """The latest snapshot (read now if there is none yet)."""
        return self.snapshot if self.snapshot is not None else await self.refresh()

    # ------------------------------------------------------------ lifecycle

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a bad refresh must not end the loop; the next one may work
                _log.exception("dashboard refresh failed")
            await asyncio.sleep(self.settings.dashboard_refresh_s)

    async def start(self) -> None:
        """Begin refreshing in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="keel-dashboard-refresh")

    async def stop(self) -> None:
        """Stop refreshing and close connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        async with self._lock:
            if self._kafka is not None:
                await self._kafka.close()
                self._kafka = None
            if self._pg is not None:
                await self._pg.close()
                self._pg = None
        await self._http.aclose()

    # ------------------------------------------------------------ gauges

    def _register_gauges(self) -> None:
        gauges = (
            ("keel_consumer_group_lag_records", self._lag, "Records between each partition's end and the group"),
            ("keel_consumer_group_members", self._members, "Members of the projector's consumer group"),
            ("keel_topic_end_offset", self._ends, "Sum of end offsets of a change topic: rate() is write throughput"),
            ("keel_dlq_records", self._dlq, "Records in the dead-letter topic"),
            ("keel_dlq_recent_records", self._dlq_recent, "Dead letters newer than doctor_dlq_window_s"),
            ("keel_conflict_decisions", self._conflicts, "Conflict decisions recorded, by entity type and field"),
            ("keel_devices", self._devices, "Enrolled devices"),
            ("keel_devices_schema_version", self._versions, "Devices per entity type and agreed schema version"),
            ("keel_devices_deprecated_version", self._deprecated, "Devices on a version below the stable one"),
            ("keel_device_backlog_entries", self._backlog, "Outbox entries not acknowledged: the 10 furthest behind"),
            ("keel_devices_behind", self._behind, "Devices with outbox entries they have not acknowledged"),
            ("keel_outbox_rows", self._outbox_rows, "Rows in the outbox (the feed not yet pruned)"),
        )
        for name, source, description in gauges:
            observe(name, source, description=description, meter="dashboard")

    def _view(self) -> tuple[KafkaView, PgView] | None:
        snapshot = self.snapshot
        return None if snapshot is None else (snapshot.kafka, snapshot.pg)

    def _lag(self) -> Observations:
        view = self._view()
        if view is None or view[0].error:
            return []
        group = self.settings.consumer_group
        return [
            (float(p.lag), {"group": group, "topic": p.topic, "partition": str(p.partition)})
            for p in view[0].partitions
        ]

    def _members(self) -> Observations:
        view = self._view()
        if view is None or view[0].group is None:
            return []
        return [(float(view[0].group.members), {"group": view[0].group.group})]

    def _ends(self) -> Observations:
        view = self._view()
        if view is None or view[0].error:
            return []
        ends: dict[str, int] = {}
        for partition in view[0].partitions:
            ends[partition.topic] = ends.get(partition.topic, 0) + partition.end
        return [(float(end), {"topic": topic}) for topic, end in sorted(ends.items())]

    def _dlq(self) -> Observations:
        view = self._view()
        letters = view[0].dead_letters if view is not None else None
        return [] if letters is None else [(float(letters.records), {"topic": letters.topic})]

    def _dlq_recent(self) -> Observations:
        view = self._view()
        letters = view[0].dead_letters if view is not None else None
        return [] if letters is None else [(float(letters.recent), {"topic": letters.topic})]

    def _conflicts(self) -> Observations:
        view = self._view()
        if view is None or view[1].error:
            return []
        return [(float(f.conflicts), {"entity_type": f.entity_type, "field": f.field}) for f in view[1].hot_fields]

    def _devices(self) -> Observations:
        view = self._view()
        return [] if view is None or view[1].error else [(float(view[1].devices_total), {})]

    def _versions(self) -> Observations:
        view = self._view()
        if view is None or view[1].error:
            return []
        return [(float(v.devices), {"entity_type": v.entity_type, "version": str(v.version)}) for v in view[1].versions]

    def _deprecated(self) -> Observations:
        view = self._view()
        if view is None or view[1].error:
            return []
        counts = dict.fromkeys(self.catalog.entities(), 0)
        for share in view[1].versions:
            if share.deprecated:
                counts[share.entity_type] = counts.get(share.entity_type, 0) + share.devices
        return [(float(count), {"entity_type": entity}) for entity, count in sorted(counts.items())]

    def _backlog(self) -> Observations:
        view = self._view()
        if view is None or view[1].error:
            return []
        return [(float(b.entries), {"device": b.device_id}) for b in view[1].backlog]

    def _behind(self) -> Observations:
        view = self._view()
        return [] if view is None or view[1].error else [(float(view[1].devices_behind), {})]

    def _outbox_rows(self) -> Observations:
        view = self._view()
        return [] if view is None or view[1].error else [(float(view[1].outbox_rows), {})]


def _retry_key(name: str, labels: dict[str, str]) -> str | None:
    if name == "keel_gateway_requests_total" and labels.get("status") in ("429", "503"):
        return f"gateway_{labels['status']}"
    if name == "keel_gateway_push_ops_total" and labels.get("outcome") == "duplicate":
        return "duplicates_acknowledged"
    if name == "keel_projector_retries_total":
        return "projector_retries"
    if name == "keel_projector_duplicates_total":
        return "projector_duplicates"
    return None


def _page(refresh_s: float) -> str:
    text = resources.files("deploy.observability").joinpath("dashboard.html").read_text(encoding="utf-8")
    return text.replace("__REFRESH_MS__", str(int(refresh_s * 1000)))


def build_dashboard_app(dashboard: Dashboard, *, manage_lifecycle: bool = True) -> Starlette:
    """The ASGI app: `/` (the page), `/api/snapshot`, `/healthz`, `/metrics`."""
    page = _page(dashboard.settings.dashboard_refresh_s)

    async def index(request: Request) -> Response:
        del request
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    async def snapshot(request: Request) -> Response:
        del request
        current = await dashboard.current()
        return JSONResponse(current.to_json(), headers={"cache-control": "no-store"})

    async def healthz(request: Request) -> Response:
        del request
        current = dashboard.snapshot
        body = {
            "status": "ok",
            "kafka": None if current is None else current.kafka.error or "ok",
            "postgresql": None if current is None else current.pg.error or "ok",
        }
        return JSONResponse(body)

    async def metrics(request: Request) -> Response:
        del request
        return Response(prometheus_text(), media_type=PROMETHEUS_CONTENT_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        if manage_lifecycle:
            await dashboard.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await dashboard.stop()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/snapshot", snapshot, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class DashboardServer:
    """The dashboard served by uvicorn inside a running event loop (tests); port 0 picks a free one."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.dashboard = Dashboard(settings)
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self, *, timeout_s: float = 30.0) -> str:
        """Serve and return the base URL once it accepts requests."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(build_dashboard_app(self.dashboard), log_config=None, access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="keel-dashboard")
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                if self._task.done():
                    await self._task
                    raise ServiceUnavailableError("dashboard", "uvicorn stopped during start-up")
                await asyncio.sleep(0.02)
        self.url = f"http://{self._host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server, self._task = None, None


class _QuietServer(uvicorn.Server):
    """uvicorn that logs the shutdown signal through structlog like the other services."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop serving."""
        _log.info("signal received: stopping", signal=sig)
        super().handle_exit(sig, frame)


def serve_dashboard(settings: Settings) -> None:
    """Blocking entry point of `keel run dashboard` (until SIGINT/SIGTERM)."""
    configure_telemetry(
        "keel-dashboard", settings.otel_exporter, settings.otel_endpoint, sample_ratio=settings.otel_sample_ratio
    )
    dashboard = Dashboard(settings)
    config = uvicorn.Config(
        build_dashboard_app(dashboard),
        host=settings.dashboard_host,
        port=settings.dashboard_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    _log.info("dashboard listening", url=f"http://{settings.dashboard_host}:{settings.dashboard_port}/")
    asyncio.run(_QuietServer(config).serve())
