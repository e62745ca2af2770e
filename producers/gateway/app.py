"""The gateway's HTTP surface (Starlette): routes, bearer authentication, body limits and error mapping.

Every Keel error becomes a JSON `ErrorBody` with a status that tells a client what to do: 400 fix the
request, 401 handshake again, 403 never (not yours), 409 seq conflict, 413 send less, 426 upgrade the app,
429 wait for Retry-After, 503 back off and retry (an outage of Kafka, the registry or PostgreSQL is never
a 500). Bodies are limited before they are read: a Content-Length over the limit is refused at once and a
chunked body is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from keel.errors import (
    AuthError,
    BackpressureError,
    ConfigurationError,
    ForbiddenError,
    KeelError,
    PayloadTooLargeError,
    RequestTimeoutError,
    SequenceError,
    TransientError,
    UpgradeRequiredError,
    ValidationError,
)
from keel.lifecycle import State
from keel.logging import bind_context, get_logger
from keel.telemetry import PROMETHEUS_CONTENT_TYPE, prometheus_text
from producers.gateway.gateway import Gateway
from producers.gateway.metrics import RequestMetricsMiddleware
from producers.gateway.openapi import openapi_document
from producers.gateway.request_limits import BodyDeadline
from producers.gateway.tokens import DeviceClaims, bearer_token
from producers.wire import EnrollRequest, ErrorBody, HandshakeRequest, PushRequest

__all__ = ["build_app", "error_response"]

_log = get_logger("gateway.http")
M = TypeVar("M", bound=BaseModel)


def _status_of(error: KeelError) -> tuple[int, str, dict[str, Any], dict[str, str]]:  # noqa: PLR0911 - one per class
    """(status, code, detail, headers) of an error."""
    if isinstance(error, UpgradeRequiredError):
        detail = {
            "entity": error.entity,
            "client_versions": error.client_versions,
            "minimum": error.minimum,
            "newest": error.newest,
        }
        return 426, "upgrade-required", detail, {"upgrade": "keel-sdk"}
    if isinstance(error, ForbiddenError):
        return 403, "forbidden", {}, {}
    if isinstance(error, AuthError):
        return 401, "unauthorized", {}, {"www-authenticate": 'Bearer realm="keel"'}
    if isinstance(error, PayloadTooLargeError):
        return 413, "payload-too-large", {"limit_bytes": error.limit_bytes}, {}
    if isinstance(error, BackpressureError):
        seconds = max(1, math.ceil(error.retry_after_s))
        return 429, "rate-limited", {"retry_after_ms": int(error.retry_after_s * 1000)}, {"retry-after": str(seconds)}
    if isinstance(error, ValidationError):
        return 400, "invalid", {"field": error.field} if error.field else {}, {}
    if isinstance(error, SequenceError):
        return 409, "sequence", {}, {}
    if isinstance(error, RequestTimeoutError):
        return 408, "request-timeout", {}, {"connection": "close"}
    if isinstance(error, TransientError):
        service = getattr(error, "service", None)
        return 503, "unavailable", {"service": service} if service else {}, {"retry-after": "1"}
    if isinstance(error, ConfigurationError):
        return 503, "not-ready", {}, {"retry-after": "5"}
    return 400, "refused", {}, {}


def error_response(error: KeelError) -> JSONResponse:
    """The HTTP answer for a Keel error."""
    status, code, detail, headers = _status_of(error)
    body = ErrorBody(error=code, message=str(error), detail=detail)
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


async def _keel_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, KeelError)
    response = error_response(error)
    log = _log.warning if response.status_code >= 500 else _log.info
    log("request refused", path=request.url.path, status=response.status_code, error=str(error))
    return response


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValidationError("Content-Length is not a number")
        if int(declared) > limit:
            raise PayloadTooLargeError(f"body of {declared} bytes exceeds the {limit}-byte limit", limit_bytes=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body exceeds the {limit}-byte limit", limit_bytes=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except PydanticValidationError as error:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": str(error)}
        where = ".".join(str(part) for part in first["loc"])
        raise ValidationError(f"{model.__name__}: {where}: {first['msg']}", field=where or None) from error


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


class _Api:
    """Endpoints bound to one `Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def claims(self, request: Request) -> DeviceClaims:
        claims = await self.gateway.tokens.verify(bearer_token(request.headers.get("authorization")))
        bind_context(tenant=claims.tenant_id, device=claims.device_id)  # on every log line of this request
        asked_device = request.query_params.get("device_id")
        if asked_device and asked_device != claims.device_id:
            raise ForbiddenError(f"device {claims.device_id} cannot read the outbox of device {asked_device}")
        asked_tenant = request.query_params.get("tenant_id")
        if asked_tenant and asked_tenant != claims.tenant_id:
            raise ForbiddenError(f"device {claims.device_id} does not belong to tenant {asked_tenant}")
        return claims

    def raise_if_not_running(self) -> None:
        if self.gateway.lifecycle.state is not State.RUNNING:
            raise ConfigurationError(f"gateway is {self.gateway.lifecycle.state.value}")

    async def metrics(self, request: Request) -> Response:
        del request
        return Response(prometheus_text(), media_type=PROMETHEUS_CONTENT_TYPE)

    async def healthz(self, request: Request) -> Response:
        del request
        state = self.gateway.lifecycle.state
        body = {"status": "ok" if state is State.RUNNING else state.value, "lifecycle": state.value}
        return JSONResponse(body, status_code=200 if state is State.RUNNING else 503)

    async def openapi(self, request: Request) -> Response:
        del request
        return JSONResponse(openapi_document())

    async def jwks(self, request: Request) -> Response:
        del request
        max_age = int(self.gateway.tokens.refresh_s)
        headers = {"cache-control": f"public, max-age={max_age}"}
        return JSONResponse(await self.gateway.tokens.jwks(), headers=headers)

    async def enroll(self, request: Request) -> Response:
        self.raise_if_not_running()
        body = _parse(EnrollRequest, await _read_body(request, 16 * 1024))
        return _json(await self.gateway.sessions.enroll(body), status=201)

    async def handshake(self, request: Request) -> Response:
        self.raise_if_not_running()
        body = _parse(HandshakeRequest, await _read_body(request, 64 * 1024))
        return _json(await self.gateway.sessions.handshake(body))

    async def push(self, request: Request) -> Response:
        self.raise_if_not_running()
        claims = await self.claims(request)
        body = _parse(PushRequest, await _read_body(request, self.gateway.limits.max_body_bytes))
        response = await self.gateway.push.push(claims, body, traceparent=request.headers.get("traceparent"))
        return _json(response)

    async def pull(self, request: Request) -> Response:
        self.raise_if_not_running()
        claims = await self.claims(request)
        params = request.query_params
        try:
            limit = int(params.get("limit", "500"))
            wait_s = float(params.get("wait_s", "0"))
        except ValueError as error:
            raise ValidationError(f"limit and wait_s must be numbers: {error}") from error
        if not math.isfinite(wait_s):
            raise ValidationError("wait_s must be finite", field="wait_s")
        page = await self.gateway.pull.pull(
            claims, params.get("cursor", ""), limit=limit, wait_s=wait_s, traceparent=request.headers.get("traceparent")
        )
        return _json(page)

    async def stream(self, request: Request) -> Response:
        self.raise_if_not_running()
        claims = await self.claims(request)
        heartbeat_s = self.gateway.settings.gateway_stream_heartbeat_s
        gateway = self.gateway

        async def events() -> AsyncIterator[str]:
            hello = {"device_id": claims.device_id, "tenant_id": claims.tenant_id}
            yield f"retry: 2000\nevent: hello\ndata: {json.dumps(hello)}\n\n"
            async with gateway.watcher.listen(claims.tenant_id) as moved:
                while gateway.lifecycle.state is State.RUNNING:
                    try:
                        # Not `asyncio.wait_for`: on 3.11 it can swallow the cancel of a client that went away
                        # in the iteration the outbox moved (CPython gh-86296), leaving the stream running.
                        async with asyncio.timeout(heartbeat_s):
                            await moved.wait()
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    moved.clear()
                    if gateway.lifecycle.state is State.RUNNING:
                        yield "event: poke\ndata: {}\n\n"

        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def digest(self, request: Request) -> Response:
        self.raise_if_not_running()
        claims = await self.claims(request)
        detail = [name for name in request.query_params.get("detail", "").split(",") if name]
        return _json(await self.gateway.state.digest(claims, detail))

    async def entities(self, request: Request) -> Response:
        self.raise_if_not_running()
        claims = await self.claims(request)
        entity_type = request.query_params.get("type", "")
        ids = request.query_params.get("ids", "").split(",")
        return _json(await self.gateway.state.snapshots(claims, entity_type, ids))


def build_app(gateway: Gateway, *, manage_lifecycle: bool = True) -> Starlette:
    """The ASGI app; with `manage_lifecycle` the app's lifespan starts and stops the gateway."""
    api = _Api(gateway)
    routes = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/.well-known/jwks.json", api.jwks, methods=["GET"]),
        Route("/v1/enroll", api.enroll, methods=["POST"]),
        Route("/v1/handshake", api.handshake, methods=["POST"]),
        Route("/v1/push", api.push, methods=["POST"]),
        Route("/v1/pull", api.pull, methods=["GET"]),
        Route("/v1/stream", api.stream, methods=["GET"]),
        Route("/v1/digest", api.digest, methods=["GET"]),
        Route("/v1/entities", api.entities, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        if manage_lifecycle:
            await gateway.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await gateway.stop()

    return Starlette(
        routes=routes,
        exception_handlers={KeelError: _keel_error},
        lifespan=lifespan,
        middleware=[
            Middleware(RequestMetricsMiddleware, routes=[route.path for route in routes]),
            Middleware(BodyDeadline, timeout_s=gateway.settings.gateway_body_timeout_s),
        ],
    )
