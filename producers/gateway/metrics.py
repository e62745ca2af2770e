"""The gateway's metrics: requests by route and status, push outcomes, backpressure, pulls, negotiations.

Labels stay bounded: routes are the gateway's fixed paths, statuses HTTP codes, outcomes and codes fixed
vocabularies, entity types and versions come from the catalog — never a device or tenant id.
docs/observability.md lists each metric with what to read from it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.telemetry import SECONDS_BUCKETS, SIZE_BUCKETS, get_meter

__all__ = ["GatewayMetrics", "RequestMetricsMiddleware"]

_meter = get_meter("gateway")
_requests = _meter.create_counter(
    "keel_gateway_requests_total", description="HTTP requests answered, by route and status (429, 503: retry)"
)
_request_seconds = _meter.create_histogram(
    "keel_gateway_request_seconds",
    unit="s",
    description="Time to answer a request, by route (long-polls include their wait; streams are not timed)",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
_push_ops = _meter.create_counter(
    "keel_gateway_push_ops_total",
    description="Ops of pushes by outcome: accepted, rejected, duplicate (a retry of an acknowledged op), abandoned",
)
_push_batch = _meter.create_histogram(
    "keel_gateway_push_batch_ops",
    description="Ops per push request",
    explicit_bucket_boundaries_advisory=SIZE_BUCKETS,
)
_rejections = _meter.create_counter("keel_gateway_rejections_total", description="Ops refused for good, by code")
_gaps = _meter.create_counter("keel_gateway_sequence_gaps_total", description="Pushes that stopped at a seq gap")
_backpressure = _meter.create_counter(
    "keel_gateway_backpressure_total", description="Pushes refused with 429, by limit (device-rate, producer-buffer)"
)
_produce_seconds = _meter.create_histogram(
    "keel_gateway_produce_seconds",
    unit="s",
    description="Time from handing a push's records to the producer to the broker's acknowledgement",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
_pull_entries = _meter.create_counter("keel_gateway_pull_entries_total", description="Outbox entries served, by kind")
_negotiations = _meter.create_counter(
    "keel_gateway_negotiations_total", description="Handshakes by entity type and the schema version agreed"
)


class GatewayMetrics:
    """Records what the gateway does (stateless: the instruments are process-wide)."""

    def request(self, route: str, status: int, seconds: float | None) -> None:
        """One answered request (`seconds` None for streams)."""
        _requests.add(1, {"route": route, "status": str(status)})
        if seconds is not None:
            _request_seconds.record(seconds, {"route": route})

    def push(
        self, *, ops: int, accepted: int, duplicates: int, abandoned: int, rejection_codes: Iterable[str], gap: bool
    ) -> None:
        """The outcome of one push."""
        _push_batch.record(ops)
        codes = Counter(rejection_codes)
        for outcome, count in (
            ("accepted", accepted),
            ("duplicate", duplicates),
            ("abandoned", abandoned),
            ("rejected", sum(codes.values())),
        ):
            if count:
                _push_ops.add(count, {"outcome": outcome})
        for code, count in codes.items():
            _rejections.add(count, {"code": code})
        if gap:
            _gaps.add(1)

    def backpressure(self, limit: str) -> None:
        """A push refused by a limit ("device-rate" or "producer-buffer")."""
        _backpressure.add(1, {"limit": limit})

    def produced(self, seconds: float) -> None:
        """A push's records acknowledged by the broker."""
        _produce_seconds.record(seconds)

    def pulled(self, kinds: Iterable[str]) -> None:
        """Entries of one served page, by kind."""
        for kind, count in Counter(kinds).items():
            _pull_entries.add(count, {"kind": kind})

    def negotiated(self, versions: Mapping[str, int]) -> None:
        """The versions one handshake agreed."""
        for entity_type, version in versions.items():
            _negotiations.add(1, {"entity_type": entity_type, "version": str(version)})


class RequestMetricsMiddleware:
    """ASGI middleware counting every answered request by route and status (the final one, errors included)."""

    def __init__(self, app: ASGIApp, routes: Iterable[str], untimed: Iterable[str] = ("/v1/stream",)) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.untimed = frozenset(untimed)
        self._metrics = GatewayMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; record its status when it is done."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        route = path if path in self.routes else "other"  # unknown paths must not become label values
        status = 500  # what the server answers when the app raises before responding
        started = time.monotonic()

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self._metrics.request(route, status, None if route in self.untimed else time.monotonic() - started)
