"""Fuzzing the gateway's request parsing: any body, any header, any query is a 2xx or a 4xx — never a 500,
never a crash. Bounded here; the long variant runs many more examples (`make test-long`)."""

from __future__ import annotations

import json
import string
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.wire import HandshakeRequest, WireEvent
from tests.producers.support import ENROLL_SECRET, GATEWAY_URL, FakeKeel, fake_keel

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
WIRE_FIELDS = sorted(WireEvent.model_fields)
# Ops shaped like the real thing, each field drawn from anything JSON can hold (or left out).
ops = st.dictionaries(st.sampled_from([*WIRE_FIELDS, "extra"]), json_values, max_size=len(WIRE_FIELDS) + 1)
push_bodies = st.one_of(
    st.fixed_dictionaries(
        {"ops": st.lists(ops, max_size=4)}, optional={"abandoned": json_values, "traces": json_values}
    ),
    json_values,
)
handshake_bodies = st.one_of(
    st.fixed_dictionaries(
        dict.fromkeys(HandshakeRequest.model_fields, json_values),
    ),
    json_values,
)
header_text = st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=60)
raw_bodies = st.binary(max_size=300)
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
FUZZ_LONG = settings(FUZZ, max_examples=1_500)


@pytest.fixture
async def keel() -> AsyncIterator[FakeKeel]:
    async with fake_keel(gateway_device_rate_per_s=0) as started:
        yield started


async def token_headers(http: httpx.AsyncClient) -> dict[str, str]:
    enrolled = await http.post(
        "/v1/enroll", json={"tenant_id": "acme", "enrollment_secret": ENROLL_SECRET, "device_id": "fuzzed"}
    )
    request = HandshakeRequest(
        tenant_id="acme", device_id="fuzzed", device_secret=enrolled.json()["device_secret"], versions={"task": [2]}
    )
    shaken = await http.post("/v1/handshake", content=request.model_dump_json())
    return {"authorization": f"Bearer {shaken.json()['token']}"}


def raise_if_server_error(response: httpx.Response, what: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text, what)
    body = response.json()
    if response.status_code >= 400:
        assert set(body) >= {"error", "message"}, body


class Fuzzer:
    """Sends what hypothesis draws to the gateway app in process."""

    def __init__(self, keel: FakeKeel) -> None:
        self.http = httpx.AsyncClient(transport=keel.transport, base_url=GATEWAY_URL)
        self.headers: dict[str, str] = {}

    async def __aenter__(self) -> Fuzzer:
        self.headers = await token_headers(self.http)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def body(self, path: str, body: Any, *, authorized: bool = True) -> None:
        headers = dict(self.headers) if authorized else {}
        response = await self.http.post(path, content=json.dumps(body).encode(), headers=headers)
        raise_if_server_error(response, body)

    async def raw(self, path: str, data: bytes, header: str) -> None:
        for headers in ({**self.headers, "content-type": header}, {"authorization": header}, {"traceparent": header}):
            response = await self.http.post(path, content=data, headers={**self.headers, **headers})
            raise_if_server_error(response, (data, headers))

    async def query(self, path: str, params: dict[str, str]) -> None:
        response = await self.http.get(path, params=params, headers=self.headers)
        raise_if_server_error(response, params)


@pytest.fixture
async def fuzzer(keel: FakeKeel) -> AsyncIterator[Fuzzer]:
    async with Fuzzer(keel) as started:
        yield started


@FUZZ
@given(push=push_bodies, handshake=handshake_bodies)
async def test_fuzzed_push_and_handshake_bodies_are_answered_with_4xx_never_500(
    fuzzer: Fuzzer, push: Any, handshake: Any
) -> None:
    await fuzzer.body("/v1/push", push)
    await fuzzer.body("/v1/handshake", handshake, authorized=False)
    await fuzzer.body("/v1/enroll", handshake, authorized=False)


@FUZZ
@given(data=raw_bodies, header=header_text, params=st.dictionaries(header_text, header_text, max_size=4))
async def test_fuzzed_raw_bytes_headers_and_queries_are_answered_with_4xx_never_500(
    fuzzer: Fuzzer, data: bytes, header: str, params: dict[str, str]
) -> None:
    for path in ("/v1/push", "/v1/handshake", "/v1/enroll"):
        await fuzzer.raw(path, data, header)
    for path in ("/v1/pull", "/v1/digest", "/v1/entities"):
        await fuzzer.query(path, params)


@pytest.mark.long
@FUZZ_LONG
@given(push=push_bodies, data=raw_bodies, header=header_text)
async def test_fuzzed_requests_long(fuzzer: Fuzzer, push: Any, data: bytes, header: str) -> None:
    await fuzzer.body("/v1/push", push)
    await fuzzer.raw("/v1/push", data, header)
