"""The gateway's OpenAPI 3.1 document, built from the wire models so it cannot drift from the code."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from keel import __version__
from producers.wire import (
    DigestResponse,
    EnrollRequest,
    EnrollResponse,
    EntitySnapshotsResponse,
    ErrorBody,
    HandshakeRequest,
    HandshakeResponse,
    PullResponse,
    PushRequest,
    PushResponse,
    WireEvent,
)

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"
_MODELS: tuple[type[BaseModel], ...] = (
    EnrollRequest,
    EnrollResponse,
    HandshakeRequest,
    HandshakeResponse,
    PushRequest,
    PushResponse,
    PullResponse,
    DigestResponse,
    EntitySnapshotsResponse,
    ErrorBody,
    WireEvent,
)


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed request",
        401: "Missing, expired or invalid token (handshake again)",
        403: "Not allowed for this device or tenant",
        408: "The request body arrived too slowly (KEEL_GATEWAY_BODY_TIMEOUT_S); send it again",
        413: "Body or batch too large (send fewer ops)",
        426: "The client's schema versions are below the server's minimum (upgrade the app)",
        429: "Rate or producer buffer limit; wait for Retry-After",
        503: "Kafka, the registry or PostgreSQL unavailable; retry with backoff",
    }
    return {str(s): {"description": meaning[s], **_json_body(ErrorBody)} for s in statuses}


def _query(name: str, description: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document served at /openapi.json."""
    _, definitions = models_json_schema([(m, "validation") for m in _MODELS], ref_template=_REF)
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    device_param = _query("device_id", "Must be the token's device when given (403 otherwise)", {"type": "string"})
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness and readiness",
                "responses": {"200": {"description": "Running"}, "503": {"description": "Not running"}},
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "summary": "Public keys (JWKS, RFC 7517) that verify device tokens, by key id",
                "responses": {"200": {"description": "The key set: every key that may still verify a token"}},
            }
        },
        "/v1/enroll": {
            "post": {
                "summary": "Enroll a device with the enrollment secret; returns its credentials once",
                "requestBody": {"required": True, **_json_body(EnrollRequest)},
                "responses": {
                    "201": {"description": "Enrolled", **_json_body(EnrollResponse)},
                    **_errors(400, 403, 408, 413),
                },
            }
        },
        "/v1/handshake": {
            "post": {
                "summary": "Authenticate, negotiate schema versions, get a token, the server time and the seq head",
                "requestBody": {"required": True, **_json_body(HandshakeRequest)},
                "responses": {
                    "200": {"description": "Agreed", **_json_body(HandshakeResponse)},
                    **_errors(400, 401, 408, 413, 426, 503),
                },
            }
        },
        "/v1/push": {
            "post": {
                "summary": "Push ops in seq order; answered after the broker acknowledged them",
                "security": secured,
                "requestBody": {"required": True, **_json_body(PushRequest)},
                "responses": {
                    "200": {"description": "Highest consumed seq, rejections, duplicates", **_json_body(PushResponse)},
                    **_errors(400, 401, 403, 408, 413, 429, 503),
                },
            }
        },
        "/v1/pull": {
            "get": {
                "summary": "The device's outbox after a cursor, down-cast to its versions, with a manifest",
                "security": secured,
                "parameters": [
                    _query("cursor", "Opaque cursor of the last applied page ('' from the start)", {"type": "string"}),
                    _query("limit", "Most entries", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _query("wait_s", "Long-poll up to this many seconds when nothing is new", {"type": "number"}),
                    device_param,
                ],
                "responses": {
                    "200": {"description": "A page", **_json_body(PullResponse)},
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/v1/stream": {
            "get": {
                "summary": "Server-sent events: `poke` whenever the device's outbox grows",
                "security": secured,
                "parameters": [device_param],
                "responses": {"200": {"description": "text/event-stream"}, **_errors(401, 403, 503)},
            }
        },
        "/v1/digest": {
            "get": {
                "summary": "Digests of the tenant's state in the device's versions",
                "security": secured,
                "parameters": [_query("detail", "Entity types to list per-row hashes for", {"type": "string"})],
                "responses": {"200": {"description": "Digests", **_json_body(DigestResponse)}, **_errors(401, 503)},
            }
        },
        "/v1/entities": {
            "get": {
                "summary": "Merged states (with field stamps) of some entities in the device's version",
                "security": secured,
                "parameters": [
                    _query("type", "Entity type", {"type": "string"}, required=True),
                    _query("ids", "Comma-separated entity ids (at most 500)", {"type": "string"}, required=True),
                ],
                "responses": {
                    "200": {"description": "Snapshots", **_json_body(EntitySnapshotsResponse)},
                    **_errors(400, 401, 503),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Keel gateway", "version": __version__, "description": "Device push/pull API"},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)"}},
        },
    }
