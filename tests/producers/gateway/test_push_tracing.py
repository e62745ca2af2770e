"""The push path's spans and metrics on fakes: each op continues its own trace into its Kafka headers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from keel.telemetry import capture_spans, prometheus_text
from producers.wire import PushRequest
from schemas.envelope import TraceHeaders
from tests.producers.gateway.test_push import CLAIMS, TRACE, op
from tests.producers.support import FakeKeel, fake_keel

OP_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def keel() -> AsyncIterator[FakeKeel]:
    async with fake_keel() as started:
        yield started


def _counter(name: str, labels: str) -> float:
    match = re.search(rf"^{name}\{{[^}}]*{labels}[^}}]*\}} ([0-9.e+]+)$", prometheus_text().decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_an_op_with_a_trace_is_produced_in_its_own_trace_and_linked_to_the_push(keel: FakeKeel) -> None:
    assert keel.gateway is not None
    accepted = _counter("keel_gateway_push_ops_total", 'outcome="accepted"')
    duplicates = _counter("keel_gateway_push_ops_total", 'outcome="duplicate"')
    request = PushRequest(ops=[op(1), op(2)], traces={1: OP_TRACE, 2: "not-a-traceparent"})
    with capture_spans() as exporter:
        await keel.gateway.push.push(CLAIMS, request, traceparent=TRACE)
        spans = list(exporter.get_finished_spans())
    await keel.gateway.push.push(CLAIMS, PushRequest(ops=[op(1, event_id=str(request.ops[0]["event_id"]))]))
    records = {r.value: dict(r.headers) for partitions in keel.log.topics.values() for rs in partitions for r in rs}
    headers = sorted(records.values(), key=lambda h: h[TraceHeaders.TRACEPARENT])
    push = next(
        s for s in spans if s.name == "keel.gateway.push" and s.parent and s.parent.span_id == 0xB7AD6B7169203331
    )
    produce = next(
        s
        for s in spans
        if s.name == "keel.gateway.produce" and s.context and s.context.trace_id == int(OP_TRACE[3:35], 16)
    )
    assert push.context is not None
    assert produce.context is not None
    assert produce.parent is not None
    assert produce.parent.span_id == 0x00F067AA0BA902B7  # a child of the op's capture span
    assert [link.context.span_id for link in produce.links] == [push.context.span_id]
    assert [link.context.span_id for link in push.links] == [0x00F067AA0BA902B7]  # the malformed one is ignored
    own = f"00-{produce.context.trace_id:032x}-{produce.context.span_id:016x}-{int(produce.context.trace_flags):02x}"
    assert {h[TraceHeaders.TRACEPARENT].decode() for h in headers} == {own, TRACE}  # op 2 keeps the request's
    assert _counter("keel_gateway_push_ops_total", 'outcome="accepted"') == accepted + 2
    assert _counter("keel_gateway_push_ops_total", 'outcome="duplicate"') == duplicates + 1
