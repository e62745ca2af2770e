"""The device's HTTP client of the gateway: one method per endpoint, every failure mapped to Keel's error tree.

429 → `BackpressureError` (with the server's Retry-After), 413 → `PayloadTooLargeError`, 426 →
`UpgradeRequiredError`, 401 → `AuthError`, 403 → `ForbiddenError`, 5xx and every network failure
(refused, reset, timed out, cut mid-body) → `ServiceUnavailableError`. A transport can be injected
(`httpx.MockTransport`, `httpx.ASGITransport`) for tests without sockets. Every request carries the W3C
`traceparent` of the caller's current span (the sync loop's push or pull span).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from keel.errors import (
    AuthError,
    BackpressureError,
    ForbiddenError,
    KeelError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UpgradeRequiredError,
    ValidationError,
)
from keel.telemetry import trace_headers
from producers.wire import (
    AbandonedSeq,
    DigestResponse,
    EnrollRequest,
    EnrollResponse,
    EntitySnapshotsResponse,
    HandshakeRequest,
    HandshakeResponse,
    PullResponse,
    PushRequest,
    PushResponse,
    WireEvent,
)

__all__ = ["GatewayClient", "StreamEvent"]

M = TypeVar("M", bound=BaseModel)


class StreamEvent:
    """One server-sent event: its name and its data (parsed JSON when it is JSON)."""

    def __init__(self, name: str, data: Any) -> None:
        self.name = name
        self.data = data

    def __repr__(self) -> str:
        return f"StreamEvent({self.name!r}, {self.data!r})"


def _retry_after(response: httpx.Response, body: dict[str, Any]) -> float:
    detail = body.get("detail") or {}
    if isinstance(detail, dict) and isinstance(detail.get("retry_after_ms"), int | float):
        return float(detail["retry_after_ms"]) / 1000
    header = response.headers.get("retry-after", "1")
    try:
        return max(0.0, float(header))
    except ValueError:
        return 1.0


def _raise_for(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    try:
        parsed: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        parsed = {}
    body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    message = str(body.get("message") or response.reason_phrase or f"HTTP {status}")
    raw_detail = body.get("detail")
    detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
    if status == 429:
        raise BackpressureError(f"gateway: {message}", _retry_after(response, body))
    if status == 413:
        raise PayloadTooLargeError(f"gateway: {message}", limit_bytes=int(detail.get("limit_bytes", 0)))
    if status == 426:
        raise UpgradeRequiredError(
            str(detail.get("entity", "?")),
            [int(v) for v in detail.get("client_versions", [])],
            int(detail.get("minimum", 0)),
            int(detail.get("newest", 0)),
        )
    if status == 401:
        raise AuthError(f"gateway: {message}")
    if status == 403:
        raise ForbiddenError(f"gateway: {message}")
    if status >= 500 or status in (404, 408):
        # 404 too: a gateway behind a proxy that is still starting answers 404 for a moment.
        raise ServiceUnavailableError("gateway", f"HTTP {status}: {message}")
    raise ValidationError(f"gateway refused the request (HTTP {status}): {message}")


class GatewayClient:
    """Calls the gateway's /v1 API."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 15.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            headers={"user-agent": "keel-device-sdk/0.1"},
        )

    async def _request(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        token: str | None = None,
        body: BaseModel | None = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> M:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        headers.update(trace_headers())
        content = body.model_dump_json(exclude_none=False).encode() if body is not None else None
        if content is not None:
            headers["content-type"] = "application/json"
        timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)) if timeout_s is not None else None
        try:
            response = await self._http.request(
                method,
                path,
                content=content,
                params=params,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as error:
            raise ServiceUnavailableError("gateway", f"{method} {path}: {error!r}") from error
        _raise_for(response)
        try:
            return model.model_validate_json(response.content)
        except PydanticValidationError as error:
            # A body cut or mangled in transit (a proxy slicing or resetting) is a network failure, not ours.
            raise ServiceUnavailableError("gateway", f"{method} {path}: unreadable response: {error}") from error

    async def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """POST /v1/enroll."""
        return await self._request("POST", "/v1/enroll", EnrollResponse, body=request)

    async def handshake(self, request: HandshakeRequest) -> HandshakeResponse:
        """POST /v1/handshake."""
        return await self._request("POST", "/v1/handshake", HandshakeResponse, body=request)

    async def push(
        self,
        token: str,
        ops: Sequence[WireEvent],
        abandoned: Sequence[AbandonedSeq] = (),
        traces: Mapping[int, str] | None = None,
    ) -> PushResponse:
        """POST /v1/push (`traces`: seq → traceparent of the op's capture)."""
        request = PushRequest(
            ops=[op.model_dump(mode="json") for op in ops], abandoned=list(abandoned), traces=dict(traces or {})
        )
        return await self._request("POST", "/v1/push", PushResponse, token=token, body=request)

    async def pull(self, token: str, cursor: str, *, limit: int = 500, wait_s: float = 0.0) -> PullResponse:
        """GET /v1/pull (long-polls up to `wait_s` when the outbox has nothing new)."""
        return await self._request(
            "GET",
            "/v1/pull",
            PullResponse,
            token=token,
            params={"cursor": cursor, "limit": limit, "wait_s": wait_s},
            timeout_s=self._timeout_s + wait_s,
        )

    async def digest(self, token: str, *, detail: Sequence[str] = ()) -> DigestResponse:
        """GET /v1/digest (with per-row hashes for the entity types in `detail`)."""
        params = {"detail": ",".join(detail)} if detail else None
        return await self._request("GET", "/v1/digest", DigestResponse, token=token, params=params)

    async def entities(self, token: str, entity_type: str, ids: Sequence[str]) -> EntitySnapshotsResponse:
        """GET /v1/entities: the server's state of some entities in this device's version."""
        return await self._request(
            "GET",
            "/v1/entities",
            EntitySnapshotsResponse,
            token=token,
            params={"type": entity_type, "ids": ",".join(ids)},
        )

    async def stream(self, token: str, *, read_timeout_s: float = 45.0) -> AsyncIterator[StreamEvent]:
        """GET /v1/stream: server-sent events (a `poke` whenever this device's outbox grows)."""
        headers = {"authorization": f"Bearer {token}", "accept": "text/event-stream"}
        timeout = httpx.Timeout(5.0, read=read_timeout_s)
        try:
            async with self._http.stream("GET", "/v1/stream", headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response)
                name, data = "message", list[str]()
                async for line in response.aiter_lines():
                    if not line:
                        if data:
                            text = "\n".join(data)
                            try:
                                parsed: Any = json.loads(text)
                            except json.JSONDecodeError:
                                parsed = text
                            yield StreamEvent(name, parsed)
                        name, data = "message", list[str]()
                    elif line.startswith(":"):
                        continue  # a heartbeat comment
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except httpx.HTTPError as error:
            raise ServiceUnavailableError("gateway", f"stream: {error!r}") from error

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


def is_transient(error: BaseException) -> bool:
    """Whether retrying later can help (Keel errors say so themselves)."""
    return isinstance(error, KeelError) and error.retriable
