"""Devices of a bench talking to a gateway over HTTP: enrolled and handshaken with the SDK's own client.

The hot loop posts request bodies serialised beforehand (with the SDK's wire models), so the load generator
spends its CPU on HTTP, not on building ops: on a 2-core machine it shares the cores with the services it
measures. Every answer is checked: a push counts only when its `acked_seq` covers every op it carried. Like
the SDK, a device sends the same body again after a dropped connection or a 429/503 (a push is idempotent:
seqs at or below the device's head come back as duplicates), so a keep-alive race is not a lost op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from deploy.bench.services import ENROLLMENT_SECRET
from deploy.bench.workload import DeviceStream
from keel.errors import ServiceUnavailableError
from producers.device.gateway_client import GatewayClient
from producers.wire import EnrollRequest, HandshakeRequest, PushResponse

__all__ = ["HttpPusher", "enroll"]

ATTEMPTS = 5
RETRIED_STATUS = frozenset({429, 503})

VERSIONS = {"task": [1, 2, 3], "project": [1], "comment": [1]}


async def enroll(
    url: str, streams: Sequence[DeviceStream], *, public_keys: dict[str, str] | None = None
) -> dict[str, str]:
    """Enroll every stream's device (with its public key, when given) and handshake: device id → token."""
    client = GatewayClient(url, timeout_s=30.0)
    tokens: dict[str, str] = {}
    try:

        async def one(stream: DeviceStream) -> None:
            enrolled = await client.enroll(
                EnrollRequest(
                    tenant_id=stream.tenant_id,
                    enrollment_secret=ENROLLMENT_SECRET,
                    device_id=stream.device_id,
                    public_key=(public_keys or {}).get(stream.device_id),
                )
            )
            answer = await client.handshake(
                HandshakeRequest(
                    tenant_id=stream.tenant_id,
                    device_id=stream.device_id,
                    device_secret=enrolled.device_secret,
                    versions=VERSIONS,
                )
            )
            tokens[stream.device_id] = answer.token

        for start in range(0, len(streams), 16):
            await asyncio.gather(*(one(stream) for stream in streams[start : start + 16]))
    finally:
        await client.aclose()
    return tokens


class HttpPusher:
    """Posts prepared push bodies for enrolled devices and checks every answer."""

    def __init__(
        self,
        url: str,
        tokens: dict[str, str],
        *,
        connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._tokens = tokens
        self._http = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            transport=transport,
        )

    async def push(self, device_id: str, body: bytes, last_seq: int) -> PushResponse:
        """POST /v1/push; ServiceUnavailableError unless the gateway acknowledged up to `last_seq`."""
        headers = {"authorization": f"Bearer {self._tokens[device_id]}", "content-type": "application/json"}
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self._http.post("/v1/push", content=body, headers=headers)
            except httpx.TransportError:
                # uvicorn closes an idle keep-alive connection as the next request goes out on it.
                if attempt == ATTEMPTS:
                    raise
            else:
                if response.status_code not in RETRIED_STATUS or attempt == ATTEMPTS:
                    break
            await asyncio.sleep(0.05 * attempt)
        if response.status_code != 200:
            raise ServiceUnavailableError(
                "gateway", f"push of {device_id}: HTTP {response.status_code}: {response.text}"
            )
        answer = PushResponse.model_validate_json(response.content)
        if answer.acked_seq < last_seq or answer.rejections:
            first = answer.rejections[0] if answer.rejections else None
            raise ServiceUnavailableError(
                "gateway", f"push of {device_id} acknowledged up to {answer.acked_seq} of {last_seq}; first: {first}"
            )
        return answer

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()
