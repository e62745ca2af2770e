"""The push path on fakes: seq continuity, idempotent retries, per-op rejections, backpressure, outages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keel.errors import (
    BackpressureError,
    ForbiddenError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    ValidationError,
)
from keel.hlc import HlcTimestamp
from producers.gateway.push import PushService
from producers.gateway.tokens import DeviceClaims
from producers.wire import AbandonedSeq, PushRequest, WireEvent
from schemas.codec import unframe
from schemas.envelope import ChangeEvent, Op, TraceHeaders, new_event_id
from tests.producers.support import FakeKeel, fake_keel

CLAIMS = DeviceClaims("acme", "d-1", {"task": 2, "project": 1, "comment": 1}, 0)
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def op(
    seq: int,
    *,
    entity_id: str = "t-1",
    fields: dict[str, object] | None = None,
    version: int = 2,
    device: str = "d-1",
    kind: Op = Op.UPSERT,
    event_id: str | None = None,
) -> dict[str, object]:
    values = {"title": f"op {seq}"} if fields is None else fields
    event = ChangeEvent(
        event_id=event_id or new_event_id(),
        tenant_id="acme",
        device_id=device,
        device_seq=seq,
        entity_type="task",
        entity_id=entity_id,
        op=kind,
        hlc=HlcTimestamp(1_000 + seq, 0, device),
        schema_version=version,
        payload=None if kind is Op.DELETE else values,
        changed_fields=() if kind is Op.DELETE else tuple(values),
    )
    return WireEvent.of(event).model_dump(mode="json")


@pytest.fixture
async def keel() -> AsyncIterator[FakeKeel]:
    async with fake_keel() as started:
        yield started


def push_service(keel: FakeKeel) -> PushService:
    assert keel.gateway is not None
    return keel.gateway.push


async def test_new_ops_are_produced_with_their_writer_schema_and_headers_then_acknowledged(keel: FakeKeel) -> None:
    service = push_service(keel)
    response = await service.push(
        CLAIMS, PushRequest(ops=[op(1), op(2, fields={"notes": "v1"}, version=1)]), traceparent=TRACE
    )
    assert (response.acked_seq, response.rejections, response.duplicates, response.gap) == (2, [], [], None)
    records = [r for partitions in keel.log.topics.values() for rs in partitions for r in rs]
    assert len(records) == 2
    ids = sorted(unframe(r.value)[0] for r in records)
    assert ids[0] != ids[1], "each op is encoded with the writer schema of its own version"
    headers = dict(records[0].headers)
    assert headers[TraceHeaders.TRACEPARENT] == TRACE.encode()
    assert headers[TraceHeaders.TENANT] == b"acme"
    assert headers[TraceHeaders.DEVICE] == b"d-1"
    assert TraceHeaders.ACCEPTED_AT_MS in headers
    assert {r.key for r in records} == {b"t-1"}
    assert await keel.ledger.head("d-1") == 2


async def test_a_retry_is_acknowledged_again_without_producing_and_a_replayed_seq_is_rejected(keel: FakeKeel) -> None:
    service = push_service(keel)
    first = [op(1), op(2)]
    await service.push(CLAIMS, PushRequest(ops=first))
    again = await service.push(CLAIMS, PushRequest(ops=[*first, op(3)]))
    assert (again.acked_seq, again.duplicates) == (3, [1, 2])
    assert len(keel.log_values()) == 3
    replay = await service.push(CLAIMS, PushRequest(ops=[op(2)]))
    [rejection] = replay.rejections
    assert (rejection.seq, rejection.code) == (2, "replay")
    assert replay.acked_seq == 3
    assert len(keel.log_values()) == 3


async def test_a_bad_op_is_rejected_alone_and_its_seq_counts_as_consumed(keel: FakeKeel) -> None:
    service = push_service(keel)
    ops = [
        op(1),
        op(2, fields={"priority": 7}),
        op(3, kind=Op.OVERRIDE),
        op(4, fields={"title": "fine"}),
        {**op(5), "hlc": "not a clock"},
        op(6, fields={"title": "still fine"}),
    ]
    response = await service.push(CLAIMS, PushRequest(ops=ops))
    assert response.acked_seq == 6
    assert [(r.seq, r.code) for r in response.rejections] == [
        (2, "invalid"),
        (3, "forbidden-op"),
        (5, "malformed"),
    ]
    assert response.rejections[0].field == "priority"
    assert "outside 0..3" in response.rejections[0].reason
    assert len(keel.log_values()) == 3
    retried = await service.push(CLAIMS, PushRequest(ops=[ops[1]]))
    assert [(r.seq, r.code) for r in retried.rejections] == [(2, "invalid")], "a retry hears the same verdict"


async def test_a_gap_stops_processing_and_names_the_expected_seq(keel: FakeKeel) -> None:
    service = push_service(keel)
    response = await service.push(CLAIMS, PushRequest(ops=[op(1), op(2), op(5), op(6)]))
    assert response.acked_seq == 2
    assert response.gap is not None
    assert (response.gap.expected, response.gap.received) == (3, 5)
    assert len(keel.log_values()) == 2


async def test_abandoned_seqs_are_consumed_without_producing(keel: FakeKeel) -> None:
    service = push_service(keel)
    abandoned = AbandonedSeq(seq=2, event_id=new_event_id(), reason="too large for any request")
    response = await service.push(CLAIMS, PushRequest(ops=[op(1), op(3)], abandoned=[abandoned]))
    assert (response.acked_seq, response.rejections, response.gap) == (3, [], None)
    assert len(keel.log_values()) == 2


async def test_whole_request_refusals(keel: FakeKeel) -> None:
    service = push_service(keel)
    with pytest.raises(ForbiddenError, match="cannot push as device 'd-2'"):
        await service.push(CLAIMS, PushRequest(ops=[op(1, device="d-2")]))
    with pytest.raises(ValidationError, match="appears twice"):
        await service.push(CLAIMS, PushRequest(ops=[op(1), op(1)]))
    with pytest.raises(ValidationError, match="no usable device_seq"):
        await service.push(CLAIMS, PushRequest(ops=[{"device_seq": "one"}]))
    with pytest.raises(PayloadTooLargeError, match="501 ops"):
        await service.push(CLAIMS, PushRequest(ops=[op(n) for n in range(1, 502)]))
    assert keel.log_values() == []


async def test_an_outage_or_a_full_buffer_moves_nothing(keel: FakeKeel) -> None:
    service = push_service(keel)
    keel.log.available = False
    with pytest.raises(ServiceUnavailableError, match="kafka"):
        await service.push(CLAIMS, PushRequest(ops=[op(1)]))
    assert await keel.ledger.head("d-1") == 0
    keel.log.available = True
    keel.ledger.available = False
    with pytest.raises(ServiceUnavailableError, match="postgresql"):
        await service.push(CLAIMS, PushRequest(ops=[op(1)]))
    keel.ledger.available = True
    budget = service._budget
    budget.in_flight = budget.max_bytes
    with pytest.raises(BackpressureError, match="producer buffer full") as caught:
        await service.push(CLAIMS, PushRequest(ops=[op(1)]))
    assert caught.value.retry_after_s > 0
    budget.in_flight = 0
    assert (await service.push(CLAIMS, PushRequest(ops=[op(1)]))).acked_seq == 1


async def test_a_device_pushing_too_fast_is_told_when_to_come_back() -> None:
    async with fake_keel(gateway_device_rate_per_s=10.0, gateway_device_burst=3) as keel:
        service = push_service(keel)
        await service.push(CLAIMS, PushRequest(ops=[op(1), op(2), op(3)]))
        with pytest.raises(BackpressureError, match="exceeds 10 ops/s") as caught:
            await service.push(CLAIMS, PushRequest(ops=[op(4)]))
        assert 0 < caught.value.retry_after_s <= 0.1 + 1e-9
