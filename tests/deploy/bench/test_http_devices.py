"""The bench's HTTP devices send a push again after a dropped connection or a 429/503, like the SDK, and
count a push only when the gateway acknowledged every op it carried."""

from __future__ import annotations

import httpx
import pytest

from deploy.bench.http_devices import ATTEMPTS, HttpPusher
from keel.errors import ServiceUnavailableError


def answering(*outcomes: int | Exception) -> tuple[httpx.MockTransport, list[bytes]]:
    """A transport giving `outcomes` in turn (a status with acked_seq 10, or an exception); bodies it got."""
    bodies: list[bytes] = []
    queue = list(outcomes)

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        outcome = queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome, json={"acked_seq": 10} if outcome == 200 else {"detail": "busy"})

    return httpx.MockTransport(handle), bodies


async def push(transport: httpx.MockTransport, last_seq: int = 10) -> None:
    pusher = HttpPusher("http://gateway", {"d1": "token"}, connections=1, transport=transport)
    try:
        await pusher.push("d1", b'{"ops": []}', last_seq)
    finally:
        await pusher.aclose()


async def test_a_dropped_connection_and_a_503_are_retried_with_the_same_body() -> None:
    transport, bodies = answering(httpx.ReadError("reset"), 503, 200)
    await push(transport)
    assert bodies == [b'{"ops": []}'] * 3


async def test_after_the_last_attempt_the_error_surfaces() -> None:
    transport, bodies = answering(*([429] * ATTEMPTS))
    with pytest.raises(ServiceUnavailableError, match="HTTP 429"):
        await push(transport)
    assert len(bodies) == ATTEMPTS


async def test_a_push_acknowledged_short_of_its_last_op_is_an_error() -> None:
    transport, _ = answering(200)
    with pytest.raises(ServiceUnavailableError, match="acknowledged up to 10 of 12"):
        await push(transport, last_seq=12)


async def test_a_client_error_is_not_retried() -> None:
    transport, bodies = answering(400)
    with pytest.raises(ServiceUnavailableError, match="HTTP 400"):
        await push(transport)
    assert len(bodies) == 1
