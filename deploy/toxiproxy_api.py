"""One call to Toxiproxy's HTTP API with Keel's error mapping, shared by the demo's and the chaos runs' clients.

An unreachable server is `ServiceUnavailableError` (retriable: Toxiproxy restarts with the stack); an error
status is `ConfigurationError` with the server's own words (a proxy name taken, a toxic that does not exist).
"""

from __future__ import annotations

from typing import Any

import httpx

from keel.errors import ConfigurationError, ServiceUnavailableError

__all__ = ["toxiproxy_call"]


async def toxiproxy_call(http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """`method path` with a JSON `body` on the client's Toxiproxy; the JSON answer, None when empty."""
    try:
        response = await http.request(method, path, json=body)
    except httpx.HTTPError as error:
        raise ServiceUnavailableError("toxiproxy", f"{method} {path}: {error!r}") from error
    if response.status_code >= 400:
        raise ConfigurationError(f"toxiproxy {method} {path}: HTTP {response.status_code}: {response.text[:200]}")
    return response.json() if response.content else None
