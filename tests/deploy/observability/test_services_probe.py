"""The probes' HTTP patience: one dropped or slow answer is retried, a service that stays away is reported."""

from __future__ import annotations

import httpx
import pytest

from deploy.observability.services_probe import GET_ATTEMPTS, fetch_health, get_with_retries, registry_version
from keel.errors import ServiceUnavailableError

APICURIO = "http://registry.test/apis/ccompat/v7"


def _flaky(failures: int, exc: type[httpx.TransportError] = httpx.ReadTimeout) -> tuple[httpx.MockTransport, list[str]]:
    """A transport that fails the first `failures` requests, then answers like Apicurio 3."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if len(seen) <= failures:
            raise exc("no answer in time", request=request)
        if request.url.path.endswith("/v1/metadata/version"):
            return httpx.Response(404)
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"status": "up"})
        return httpx.Response(200, json={"name": "Apicurio Registry (SQL)", "version": "3.1.2"})

    return httpx.MockTransport(handle), seen


async def test_a_registry_that_times_out_once_is_still_reached() -> None:
    transport, seen = _flaky(1)
    async with httpx.AsyncClient(transport=transport) as client:
        version = await registry_version(client, APICURIO)
    assert version == "Apicurio Registry (SQL) 3.1.2"
    assert seen == [
        "/apis/ccompat/v7/v1/metadata/version",
        "/apis/ccompat/v7/v1/metadata/version",
        "/apis/registry/v3/system/info",
    ]


async def test_a_registry_that_never_answers_is_unavailable_after_every_attempt() -> None:
    transport, seen = _flaky(100, httpx.ConnectError)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(ServiceUnavailableError, match=f"failed {GET_ATTEMPTS} times.*ConnectError"):
            await registry_version(client, APICURIO)
    assert len(seen) == GET_ATTEMPTS


async def test_a_health_endpoint_that_drops_one_connection_is_up() -> None:
    transport, seen = _flaky(GET_ATTEMPTS - 1, httpx.RemoteProtocolError)
    async with httpx.AsyncClient(transport=transport) as client:
        answer = await fetch_health(client, "http://projector.test/health")
    assert answer.is_up
    assert len(seen) == GET_ATTEMPTS


async def test_a_health_endpoint_that_stays_down_is_an_answer_not_an_exception() -> None:
    transport, seen = _flaky(100, httpx.ConnectError)
    async with httpx.AsyncClient(transport=transport) as client:
        answer = await fetch_health(client, "http://projector.test/health")
    assert not answer.is_up
    assert answer.status is None
    assert answer.error is not None
    assert answer.error.startswith("ConnectError")
    assert len(seen) == GET_ATTEMPTS


async def test_an_http_error_status_is_not_retried() -> None:
    calls: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        response = await get_with_retries(client, "http://gateway.test/healthz", pause_s=0.0)
    assert response.status_code == 503
    assert calls == [1]
