"""Toxiproxy proxies of a run's own, in front of PostgreSQL or a gateway (never the stack's shared proxies).

A scenario that degrades a path creates a proxy named after its run on the shared Toxiproxy server, points
a service or devices at its listen address, and adds toxics (latency with jitter, timeouts, resets,
slicing, limit_data), disables and re-enables it. The proxy is deleted when the run closes, whatever
happened, so no other user of the server ever sees it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from deploy.toxiproxy_api import toxiproxy_call
from keel.errors import ConfigurationError, ServiceUnavailableError

__all__ = ["OwnProxy", "dsn_through"]


class OwnProxy:
    """One proxy of this run on a Toxiproxy server."""

    def __init__(self, api_url: str, name: str, upstream: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.name = name
        self.upstream = upstream
        self.listen = ""
        self.toxics: set[str] = set()
        # Toxiproxy answers a toxic's removal only once the links it slowed have flushed: under latency with
        # jitter on a loaded machine that took over 10 s (R6 at full size), so allow a minute.
        self._http = httpx.AsyncClient(base_url=self.api_url, timeout=60.0)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await toxiproxy_call(self._http, method, path, body)

    async def create(self) -> str:
        """Create the proxy on a free port; its listen address (host:port)."""
        created = await self._call(
            "POST", "/proxies", {"name": self.name, "listen": "127.0.0.1:0", "upstream": self.upstream, "enabled": True}
        )
        self.listen = str(created["listen"])
        return self.listen

    async def add(
        self, name: str, kind: str, attributes: dict[str, Any], *, stream: str = "downstream", toxicity: float = 1.0
    ) -> None:
        """Add a toxic (`kind`: latency, timeout, reset_peer, slicer, limit_data, bandwidth, slow_close)."""
        body = {"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes}
        await self._call("POST", f"/proxies/{self.name}/toxics", body)
        self.toxics.add(name)

    async def remove(self, name: str) -> None:
        """Remove a toxic."""
        await self._call("DELETE", f"/proxies/{self.name}/toxics/{name}")
        self.toxics.discard(name)

    async def clear(self) -> None:
        """Remove every toxic this proxy has."""
        for name in sorted(self.toxics):
            await self.remove(name)

    async def set_enabled(self, enabled: bool) -> None:
        """Off: open connections are cut and new ones refused; on: traffic flows again."""
        await self._call("POST", f"/proxies/{self.name}", {"enabled": enabled})

    async def close(self) -> None:
        """Delete the proxy (idempotent) and close the client."""
        try:
            if self.listen:
                response = await self._http.delete(f"/proxies/{self.name}")
                if response.status_code not in (204, 404):
                    raise ConfigurationError(f"toxiproxy: deleting {self.name}: HTTP {response.status_code}")
        except httpx.HTTPError as error:
            raise ServiceUnavailableError("toxiproxy", f"deleting {self.name}: {error!r}") from error
        finally:
            await self._http.aclose()


def dsn_through(dsn: str, listen: str) -> str:
    """A PostgreSQL DSN whose host and port are replaced by a proxy's listen address."""
    parts = urlsplit(dsn)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}{listen}"))
