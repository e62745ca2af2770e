"""A small client of Toxiproxy's HTTP API for the demo's network incidents, with a guaranteed restore.

The demo degrades and cuts the gateway's path to Kafka on the stack's shared `kafka-N` proxies (a client
bootstrapping at a proxy's listen address stays behind the proxies: each broker advertises its proxy's
port on that listener). It names its toxics after the run and remembers what it changed, so `restore`
puts back exactly the state it found: its toxics removed, the proxies it disabled enabled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import httpx

from deploy.toxiproxy_api import toxiproxy_call
from keel.errors import ConfigurationError

__all__ = ["ToxiproxyControl"]

_KAFKA_PROXY = re.compile(r"^kafka-\d+$")


class ToxiproxyControl:
    """The proxies in front of Kafka, and every change this run made to them."""

    def __init__(self, api_url: str, run_tag: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.run_tag = run_tag
        self._http = httpx.AsyncClient(base_url=self.api_url, timeout=10.0, transport=transport)
        self._toxics: set[tuple[str, str]] = set()
        self._disabled: set[str] = set()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await toxiproxy_call(self._http, method, path, body)

    async def kafka_proxies(self) -> dict[str, dict[str, Any]]:
        """The stack's `kafka-N` proxies by name."""
        proxies: dict[str, dict[str, Any]] = await self._call("GET", "/proxies")
        return {name: proxy for name, proxy in sorted(proxies.items()) if _KAFKA_PROXY.match(name)}

    async def proxied_bootstrap(self, *, wait_enabled_s: float = 30.0) -> str:
        """The listen address of `kafka-1`: a Kafka bootstrap that keeps a client behind the proxies.

        ConfigurationError when there is none (`keel stack up --with-toxiproxy` creates them); waits a while
        for proxies someone else disabled to come back.
        """
        deadline = time.monotonic() + wait_enabled_s
        while True:
            proxies = await self.kafka_proxies()
            if "kafka-1" not in proxies:
                raise ConfigurationError(
                    f"no kafka-1 proxy on Toxiproxy at {self.api_url}: "
                    "start the stack with `keel stack up --with-toxiproxy`"
                )
            disabled = [name for name, proxy in proxies.items() if not proxy.get("enabled", True)]
            if not disabled:
                return str(proxies["kafka-1"]["listen"])
            if time.monotonic() > deadline:
                raise ConfigurationError(f"Toxiproxy proxies {', '.join(disabled)} stay disabled; enable them first")
            await asyncio.sleep(1.0)

    async def degrade(self, latency_ms: int, jitter_ms: int) -> list[str]:
        """Add latency with jitter to both directions of every Kafka proxy; the toxic names."""
        names = []
        for proxy in await self.kafka_proxies():
            for stream in ("downstream", "upstream"):
                toxic = f"{self.run_tag}-latency-{stream}"
                await self._call(
                    "POST",
                    f"/proxies/{proxy}/toxics",
                    {
                        "name": toxic,
                        "type": "latency",
                        "stream": stream,
                        "toxicity": 1.0,
                        "attributes": {"latency": latency_ms, "jitter": jitter_ms},
                    },
                )
                self._toxics.add((proxy, toxic))
                names.append(f"{proxy}/{toxic}")
        return names

    async def heal(self) -> None:
        """Remove this run's toxics."""
        for proxy, toxic in sorted(self._toxics):
            with contextlib.suppress(ConfigurationError):  # already gone: `keel stack up` reset the proxy
                await self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")
            self._toxics.discard((proxy, toxic))

    async def cut(self) -> list[str]:
        """Disable every Kafka proxy: open connections drop, new ones are refused."""
        cut = []
        for proxy, state in (await self.kafka_proxies()).items():
            if state.get("enabled", True):
                await self._call("POST", f"/proxies/{proxy}", {"enabled": False})
                self._disabled.add(proxy)
                cut.append(proxy)
        return cut

    async def reconnect(self) -> None:
        """Enable the proxies this run disabled."""
        for proxy in sorted(self._disabled):
            await self._call("POST", f"/proxies/{proxy}", {"enabled": True})
            self._disabled.discard(proxy)

    async def intact(self) -> bool:
        """Whether this run's toxics are still there and the proxies it disabled still disabled.

        The proxies are shared: another `keel stack up` resets them (enabled, no toxics), which would quietly
        end an incident early; the incidents check this while they last.
        """
        proxies = await self.kafka_proxies()
        for proxy, toxic in self._toxics:
            if toxic not in {t.get("name") for t in proxies.get(proxy, {}).get("toxics", [])}:
                return False
        return all(not proxies.get(proxy, {}).get("enabled", True) for proxy in self._disabled)

    async def restore(self) -> None:
        """Undo everything this run changed (idempotent; for `finally` blocks)."""
        try:
            await self.heal()
        finally:
            await self.reconnect()

    async def aclose(self) -> None:
        """Restore, then close the HTTP client."""
        try:
            await self.restore()
        finally:
            await self._http.aclose()
