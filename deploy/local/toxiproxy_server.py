"""Toxiproxy, built from the Go module proxy, and the proxies the stack puts in front of its services."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from deploy.local.processes import ManagedProcess

__all__ = ["ToxiproxyServer"]


class ToxiproxyServer:
    """A toxiproxy-server process and its HTTP API."""

    def __init__(self, folder: Path, binary: Path, port: int) -> None:
        self.binary = binary
        self.port = port
        self.process = ManagedProcess("toxiproxy", folder / "toxiproxy.pid", folder / "toxiproxy.log")

    @property
    def url(self) -> str:
        """The HTTP API root."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server unless it runs."""
        if not self.process.is_alive():
            self.process.start([str(self.binary), "-host", "127.0.0.1", "-port", str(self.port)])

    def stop(self) -> bool:
        """Stop the server if we started it."""
        return self.process.stop()

    def is_healthy(self) -> bool:
        """True when the API answers."""
        if not self.process.is_alive():
            return False
        try:
            return httpx.get(f"{self.url}/version", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout_s: float) -> bool:
        """Poll until the API answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_healthy():
                return True
            time.sleep(0.3)
        return False

    def ensure_proxy(self, name: str, listen: str, upstream: str) -> None:
        """Create (or reset) a proxy: enabled, no toxics."""
        response = httpx.get(f"{self.url}/proxies/{name}", timeout=5.0)
        if response.status_code == 200:
            httpx.delete(f"{self.url}/proxies/{name}", timeout=5.0).raise_for_status()
        httpx.post(
            f"{self.url}/proxies",
            json={"name": name, "listen": listen, "upstream": upstream, "enabled": True},
            timeout=5.0,
        ).raise_for_status()
