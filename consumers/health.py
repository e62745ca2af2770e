"""A minimal HTTP health endpoint on asyncio streams: `GET /health`, `GET /ready` and `GET /metrics`.

`/health` answers liveness with details, `/ready` readiness, `/metrics` the process's Prometheus text
(keel/telemetry.py). Deliberately not uvicorn: a server that installs its own signal handlers would fight the service's
SIGTERM drain, and two JSON routes need no framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keel.logging import get_logger
from keel.telemetry import PROMETHEUS_CONTENT_TYPE, prometheus_text

__all__ = ["HealthReport", "HealthServer"]

_log = get_logger("health")
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


@dataclass(frozen=True)
class HealthReport:
    """What a service says about itself: alive (no restart needed), ready (doing its job), details."""

    alive: bool
    ready: bool
    details: dict[str, Any] = field(default_factory=dict)


class HealthServer:
    """Serves a `HealthReport` probe over HTTP/1.1 (one request per connection)."""

    def __init__(self, probe: Callable[[], HealthReport], host: str = "127.0.0.1", port: int = 0) -> None:
        self._probe = probe
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen."""
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        _log.info("health endpoint listening", url=f"http://{self._host}:{self.port}/health")

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):  # not wait_for: on 3.11 it can lose a cancel (CPython gh-86296)
                request = await reader.readuntil(b"\r\n\r\n")
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method == "GET" and path == "/metrics":
                status, content_type, payload = 200, PROMETHEUS_CONTENT_TYPE, prometheus_text()
            else:
                status, body = self._route(method, path)
                content_type, payload = "application/json", json.dumps(body, default=str).encode()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + payload)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass  # a client that sends garbage or goes away gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        if method != "GET":
            return 405, {"error": "only GET"}
        report = self._probe()
        if path in ("/health", "/healthz", "/live"):
            return (200 if report.alive else 503), {"alive": report.alive, "ready": report.ready, **report.details}
        if path in ("/ready", "/readyz"):
            return (200 if report.ready else 503), {"ready": report.ready}
        return 404, {"error": f"no route {path}"}
