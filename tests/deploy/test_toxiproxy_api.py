"""Toxiproxy's answers mapped to Keel's errors: unreachable is retriable, an error status names the server's reason."""

from __future__ import annotations

import httpx
import pytest

from deploy.toxiproxy_api import toxiproxy_call
from keel.errors import ConfigurationError, ServiceUnavailableError


def _client(handle: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url="http://toxiproxy.test", transport=handle)


async def test_a_json_answer_is_returned_and_an_empty_one_is_none() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(
            200, json={"name": "kafka-1", "listen": "127.0.0.1:19092", "echo": request.content.decode()}
        )

    async with _client(httpx.MockTransport(handle)) as http:
        created = await toxiproxy_call(http, "POST", "/proxies", {"name": "kafka-1"})
        gone = await toxiproxy_call(http, "DELETE", "/proxies/kafka-1/toxics/slow")
    assert created["listen"] == "127.0.0.1:19092"
    assert created["echo"] == '{"name":"kafka-1"}'
    assert gone is None


async def test_an_error_status_is_a_configuration_error_with_the_servers_words() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, text='{"error":"proxy already exists","status":409}')

    async with _client(httpx.MockTransport(handle)) as http:
        with pytest.raises(ConfigurationError, match=r"POST /proxies: HTTP 409: .*proxy already exists"):
            await toxiproxy_call(http, "POST", "/proxies", {"name": "kafka-1"})


async def test_an_unreachable_server_is_retriable() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with _client(httpx.MockTransport(handle)) as http:
        with pytest.raises(ServiceUnavailableError, match="GET /proxies") as caught:
            await toxiproxy_call(http, "GET", "/proxies")
    assert caught.value.retriable
